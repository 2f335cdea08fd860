"""A bounded load test of the service (httpx, threads) and tiny random models to run it against."""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..timing import percentiles, timed
from .registry import ModelCard, ModelRegistry

TINY_TEXTS = (
    "这本书写得很好，内容充实，值得推荐。",
    "质量太差了，用了两天就坏了，非常失望。",
    "物流很快，包装也不错，下次还会再来。",
    "客服态度恶劣，退货流程麻烦。",
    "价格实惠，性价比很高。",
    "翻译生硬，读起来很吃力。",
)
TINY_TEXT_MODEL, TINY_IMAGE_MODEL = "tiny-text", "tiny-digits"


def publish_tiny_models(registry: ModelRegistry, seed: int = 0) -> dict[str, ModelCard]:
    """Publish and promote a randomly initialised (untrained) 1-layer GPT text classifier and a 1-layer ViT."""
    import torch
    from sklearn.datasets import load_digits

    from ..tokenization import CharTokenizer
    from ..transformer import GPTConfig, GPTForSequenceClassification
    from ..vision_models import ViT, ViTConfig

    torch.manual_seed(seed)
    untrained = "randomly initialised, untrained: for tests and load tests only"
    tokenizer = CharTokenizer.train(TINY_TEXTS)
    text_cfg = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=64, d_model=32, n_heads=2, n_layers=1,
                         num_labels=2, dropout=0.0, attn_dropout=0.0)
    image_cfg = ViTConfig(d_model=32, n_heads=2, n_layers=1, dropout=0.0)
    pixels = load_digits().images
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = tokenizer.save(Path(tmp) / "tokenizer.json")
        text = registry.publish(
            TINY_TEXT_MODEL, GPTForSequenceClassification(text_cfg), task="text", architecture="gpt_classifier",
            config=text_cfg.to_dict(), labels=["负面", "正面"], metrics={}, preprocessing={"max_len": 64},
            files={"tokenizer.json": tok_path}, description=untrained,
        )
    image = registry.publish(
        TINY_IMAGE_MODEL, ViT(image_cfg), task="image", architecture="vit", config=image_cfg.to_dict(),
        labels=[str(d) for d in range(10)], metrics={},
        preprocessing={"image_size": 8, "max_value": 16.0, "mean": float(pixels.mean()), "std": float(pixels.std())},
        description=untrained,
    )
    return {card.name: registry.promote(card.name, card.version) for card in (text, image)}


def tiny_payloads(batch: int = 4) -> list[tuple[str, dict]]:
    """(path, JSON body) pairs for the tiny models: a batch of texts and a batch of load_digits images."""
    from sklearn.datasets import load_digits

    texts = [TINY_TEXTS[i % len(TINY_TEXTS)] for i in range(batch)]
    images = load_digits().images[:batch].tolist()
    return [("/v1/text/classify", {"model": TINY_TEXT_MODEL, "texts": texts}),
            ("/v1/image/classify", {"model": TINY_IMAGE_MODEL, "images": images})]


@dataclass
class LoadTestResult:
    """Outcome of a load test: latencies of every request, status counts, errors, wall time."""

    requests: int
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: dict[str, int]
    errors: int
    error_examples: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        """Median latency in milliseconds."""
        return percentiles(self.latencies_ms, (50,))[0]

    @property
    def p99_ms(self) -> float:
        """99th-percentile latency in milliseconds."""
        return percentiles(self.latencies_ms, (99,))[0]

    @property
    def requests_per_second(self) -> float:
        """Completed requests per second of wall time."""
        return self.requests / self.seconds

    def format(self) -> str:
        """One line: requests, concurrency, p50/p99, requests/s, errors."""
        line = (f"{self.requests} requests, {self.concurrency} concurrent: p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms, {self.requests_per_second:.0f} requests/s, {self.errors} errors")
        if self.error_examples:
            line += f" (e.g. {self.error_examples[0]})"
        return line


def run_load_test(base_url: str, payloads: Sequence[tuple[str, dict]], requests: int = 2000,
                  concurrency: int = 16, timeout: float = 30.0) -> LoadTestResult:
    """POST `requests` JSON requests (cycling through `payloads`) from `concurrency` threads; non-200 is an error."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dev dependency
        raise ValueError("the load test needs httpx: pip install 'bigmodel-course[dev]'") from None
    for name, value in (("requests", requests), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not payloads:
        raise ValueError("payloads is empty; give at least one (path, JSON body) pair")
    counter, lock = itertools.count(), threading.Lock()
    latencies, statuses, examples = [], Counter(), []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    with httpx.Client(base_url=base_url, limits=limits, timeout=timeout) as client:
        def post(path: str, body: dict) -> str:
            try:
                return str(client.post(path, json=body).status_code)
            except httpx.HTTPError as e:
                return type(e).__name__

        def worker() -> None:
            while True:
                with lock:
                    i = next(counter)
                if i >= requests:
                    return
                path, body = payloads[i % len(payloads)]
                status, elapsed = timed(lambda: post(path, body))
                with lock:
                    latencies.append(elapsed * 1000)
                    statuses[status] += 1
                    if status != "200" and len(examples) < 5:
                        examples.append(f"{path}: {status}")

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(worker) for _ in range(concurrency)]:
                future.result()
        seconds = time.perf_counter() - start
    errors = sum(n for s, n in statuses.items() if s != "200")
    return LoadTestResult(requests=requests, concurrency=concurrency, seconds=seconds, latencies_ms=latencies,
                          statuses=dict(statuses), errors=errors, error_examples=examples)


def bench_serve(requests: int = 2000, concurrency: int = 16, registry: ModelRegistry | None = None) -> LoadTestResult:
    """Publish the tiny random models to a registry (a temporary one by default), start a background server
    over it, warm it up (loads both models), then run the load test with text and image requests."""
    import httpx

    from .server import background_server

    with tempfile.TemporaryDirectory(prefix="bigmodel-bench-") as tmp:
        registry = registry or ModelRegistry(tmp)
        publish_tiny_models(registry)
        payloads = tiny_payloads()
        with background_server(registry) as url:
            for path, body in payloads:  # first requests load the models; keep that out of the timings
                httpx.post(url + path, json=body, timeout=60).raise_for_status()
            return run_load_test(url, payloads, requests=requests, concurrency=concurrency)
