"""Micro-batching: concurrent requests share forward passes, every request gets its own predictions, errors reach
every waiting request, and the service's answers equal those without micro-batching."""

import asyncio

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from bigmodel_course.serving import MicroBatcher, ModelRegistry, build_model, create_app
from bigmodel_course.serving.batching import length_buckets
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPTConfig

TEXTS = ["这本书写得很好，值得推荐", "质量太差了", "物流很快，包装也不错，下次还来", "退货麻烦", "好",
         "一般般吧，凑合用"]


class Recorder:
    """A fake model: predict returns its inputs doubled and records the size of every call."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def predict(self, inputs):
        self.calls.append(len(inputs))
        if self.fail_on is not None and self.fail_on in inputs:
            raise RuntimeError("boom")
        return [x * 2 for x in inputs]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_answers():
    model = Recorder()

    async def main():
        batcher = MicroBatcher(max_items=64, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.submit(model, [i, i + 100]) for i in range(10)))
        await batcher.aclose()
        return results

    results = run(main())
    assert results == [[2 * i, 2 * (i + 100)] for i in range(10)]
    assert model.calls == [20]


def test_batches_stop_at_max_items_and_a_lone_request_is_answered_alone():
    model = Recorder()

    async def main():
        batcher = MicroBatcher(max_items=4, max_wait_s=0.05)
        first = await asyncio.gather(*(batcher.submit(model, [i]) for i in range(10)))
        lone = await batcher.submit(model, [1])  # nobody joins it: its batch closes at the deadline
        await batcher.aclose()
        return first, lone

    first, lone = run(main())
    assert first == [[2 * i] for i in range(10)] and lone == [2]
    assert model.calls == [4, 4, 2, 1]


def test_the_worker_waits_at_most_max_wait_and_late_requests_join_the_open_batch(monkeypatch):
    """Counts, not clocks: every wait the worker starts is bounded by max_wait_s, and a request submitted while
    the worker holds an open batch (after it took the first one) shares that batch's forward pass."""
    waits = []
    real_wait_for = asyncio.wait_for

    def recording_wait_for(awaitable, timeout):
        waits.append(timeout)
        return real_wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", recording_wait_for)
    model = Recorder()

    async def main():
        batcher = MicroBatcher(max_items=2, max_wait_s=1.0)
        first = asyncio.ensure_future(batcher.submit(model, [1]))
        while not waits:  # the worker took the first request and now waits for more
            await asyncio.sleep(0)
        second = await batcher.submit(model, [2])
        result = await first, second
        await batcher.aclose()
        return result

    assert run(main()) == ([2], [4])
    assert model.calls == [2]  # one forward pass for both; it closed at max_items, not at the deadline
    assert len(waits) == 1 and 0 < waits[0] <= 1.0


def test_without_waiting_requests_are_not_held_back():
    model = Recorder()

    async def main():
        batcher = MicroBatcher(max_items=8, max_wait_s=0)
        out = [await batcher.submit(model, [i]) for i in range(3)]
        await batcher.aclose()
        return out

    assert run(main()) == [[0], [2], [4]] and model.calls == [1, 1, 1]


def test_models_are_batched_separately_and_errors_reach_every_waiting_request():
    good, bad = Recorder(), Recorder(fail_on=13)

    async def main():
        batcher = MicroBatcher(max_items=64, max_wait_s=0.05)
        jobs = [batcher.submit(good, [1]), batcher.submit(bad, [13]), batcher.submit(bad, [2]),
                batcher.submit(good, [3])]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        after = await batcher.submit(good, [5])  # the worker survived the error
        await batcher.aclose()
        return results, after

    results, after = run(main())
    assert results[0] == [2] and results[3] == [6] and after == [10]
    assert all(isinstance(r, RuntimeError) for r in results[1:3])
    assert good.calls == [2, 1] and bad.calls == [2]


def test_length_buckets_sort_by_length_and_bound_the_padded_size():
    texts = ["a" * n for n in (50, 3, 120, 4, 60, 5, 128)]
    groups = length_buckets(texts, max_tokens=130)
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))  # every text exactly once
    for group in groups:
        assert len(group) == 1 or len(group) * max(len(texts[i]) for i in group) <= 130
    assert groups[0] == [1, 3, 5]  # the three shortest share one pass
    assert length_buckets(["abc"] * 3, max_tokens=1) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="max_tokens"):
        length_buckets(texts, max_tokens=0)


def test_split_batches_answer_in_input_order_and_workers_run_in_parallel():
    class Sizes(Recorder):
        def predict(self, inputs):
            self.calls.append(sorted(len(x) for x in inputs))
            return [x.upper() for x in inputs]

    model = Sizes()
    texts = ["a" * n for n in (30, 2, 31, 3)]

    async def main():
        batcher = MicroBatcher(max_items=64, max_wait_s=0.05, split=lambda xs: length_buckets(xs, 64))
        out = await asyncio.gather(*(batcher.submit(model, [t]) for t in texts))
        await batcher.aclose()
        return out

    assert run(main()) == [[t.upper()] for t in texts]
    assert model.calls == [[2, 3], [30, 31]]

    import threading

    class Meeting(Recorder):
        """Each forward pass waits for the other: this only completes if two run at the same time."""

        def __init__(self):
            super().__init__()
            self.barrier = threading.Barrier(2, timeout=30)

        def predict(self, inputs):
            self.calls.append(threading.get_ident())
            self.barrier.wait()  # BrokenBarrierError after 30 s if the passes ran one after the other
            return inputs

    meeting = Meeting()

    async def two():
        batcher = MicroBatcher(max_items=1, max_wait_s=0, workers=2)
        out = await asyncio.gather(batcher.submit(meeting, [1]), batcher.submit(meeting, [2]))
        await batcher.aclose()
        return out

    assert run(two()) == [[1], [2]] and len(set(meeting.calls)) == 2  # two forward passes at the same time


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_items"):
        MicroBatcher(max_items=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(max_wait_s=2)
    with pytest.raises(ValueError, match="inputs is empty"):
        run(MicroBatcher().submit(Recorder(), []))
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(workers=0)
    with pytest.raises(ValueError, match="micro_batch"):
        create_app(None, micro_batch=-1)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        create_app(None, micro_batch=4, micro_batch_tokens=-1)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer.train(TEXTS)
    tok_path = tok.save(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    cfg = GPTConfig(vocab_size=tok.vocab_size, max_len=32, d_model=32, n_heads=2, n_layers=2, dropout=0.0,
                    attn_dropout=0.0).to_dict()
    model = build_model("gpt_classifier", cfg)
    torch.nn.init.normal_(model.score.weight, std=2.0)
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    card = registry.publish("reviews", model, task="text", architecture="gpt_classifier", config=cfg,
                            labels=["负面", "正面"], metrics={}, preprocessing={"max_len": 32},
                            files={"tokenizer.json": tok_path})
    registry.promote("reviews", card.version)
    return registry


async def answers(app, bodies):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.post("/v1/text/classify", json=b) for b in bodies))
        metrics = (await client.get("/metrics")).text
    return responses, metrics


def test_the_service_with_micro_batching_answers_like_the_service_without(reg):
    bodies = [{"model": "reviews", "texts": [TEXTS[i % len(TEXTS)]] * (1 + i % 3)} for i in range(24)]
    plain, _ = run(answers(create_app(reg), bodies))
    # a long wait (1 s) so that all 24 requests reach the batcher before a batch closes, however busy the machine
    batched, metrics = run(answers(create_app(reg, micro_batch=32, micro_batch_wait_ms=1000), bodies))
    unsplit, _ = run(answers(create_app(reg, micro_batch=32, micro_batch_wait_ms=1000, micro_batch_tokens=0), bodies))
    assert all(r.status_code == 200 for r in plain + batched + unsplit)
    for a, b in [*zip(plain, batched), *zip(plain, unsplit)]:
        pa, pb = a.json()["predictions"], b.json()["predictions"]
        assert [p["label"] for p in pa] == [p["label"] for p in pb]
        for x, y in zip(pa, pb):  # padding to a longer batch changes nothing beyond float rounding
            assert x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name.startswith("bigmodel_micro_batch_requests") and not s.labels.get("le")}
    batches, requests = samples["bigmodel_micro_batch_requests_count"], samples["bigmodel_micro_batch_requests_sum"]
    # 48 texts in batches of at most 32 (closed at the first request reaching 32): 2 batches, 3 only after a stall
    assert requests == 24 and 2 <= batches <= 3


def test_errors_and_limits_still_apply_with_micro_batching(reg):
    bodies = [{"model": "reviews", "texts": [""]}, {"model": "nothing", "texts": ["好"]},
              {"model": "reviews", "texts": ["好"] * 65}]
    responses, _ = run(answers(create_app(reg, micro_batch=8), bodies))
    assert [r.status_code for r in responses] == [422, 404, 422]


def test_serve_command_line_flags(capsys):
    from bigmodel_course.cli import build_parser

    args = build_parser().parse_args(["serve", "--micro-batch", "16", "--micro-batch-wait-ms", "2.5",
                                      "--micro-batch-workers", "2", "--micro-batch-tokens", "0"])
    assert (args.micro_batch, args.micro_batch_wait_ms, args.micro_batch_workers,
            args.micro_batch_tokens) == (16, 2.5, 2, 0)
    assert build_parser().parse_args(["serve"]).micro_batch == 0  # off by default
    for bad in (["--micro-batch", "-1"], ["--micro-batch-wait-ms", "5000"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
    assert "micro-batch" in capsys.readouterr().err
