"""The `bigmodel-course` command."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .utils import get_device


def _device(args: argparse.Namespace) -> torch.device:
    """The benchmark device, after applying --threads."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return get_device(args.device)


def _add_timing_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")


def _bench_attention(args: argparse.Namespace) -> int:
    from .benchmarks import bench_attention, format_results

    device = _device(args)
    results = bench_attention(args.batch, args.length, args.width, args.heads, args.rounds, device, args.causal)
    title = (f"attention forward+backward on {device} ({torch.get_num_threads()} threads): batch {args.batch}, "
             f"length {args.length}, width {args.width}, {args.heads} heads, causal={args.causal}, "
             f"median of {args.rounds} interleaved rounds; ratio = time / torch.nn.MultiheadAttention")
    print(format_results(results, title))
    return 0


def _bench_gpt(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from .benchmarks import bench_gpt, format_results

    hf_logging.set_verbosity_error()  # keep the table free of transformers' notices
    device = _device(args)
    results = bench_gpt(args.layers, args.width, args.heads, args.context, args.vocab, args.batch, args.rounds, device)
    title = (f"GPT training step on {device} ({torch.get_num_threads()} threads): {args.layers} layers, "
             f"width {args.width}, {args.heads} heads, context {args.context}, vocabulary {args.vocab}, "
             f"batch {args.batch}, median of {args.rounds} interleaved rounds; "
             f"ratio = time / transformers GPT2LMHeadModel")
    print(format_results(results, title))
    return 0


def _bench_compression(args: argparse.Namespace) -> int:
    from .benchmarks import bench_compression, format_compression

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_compression(args.profile, args.rounds, progress=not args.no_progress)
    print(f"compression of the fine-tuned review-sentiment GPT ({args.profile} profile) on the CPU "
          f"({torch.get_num_threads()} threads): weights = size of the saved safetensors file; latency = median of "
          f"{args.rounds} interleaved rounds at batch 1 (the median-length test review) and batch 32; "
          f"accuracy on the fixed test split; ratios and Δ against the first row")
    print(format_compression(rows))
    return 0


def _bench_generate(args: argparse.Namespace) -> int:
    from .benchmarks import bench_generate, format_generate

    threads_before = torch.get_num_threads()
    try:
        device = _device(args)
        threads = torch.get_num_threads()
        bench = bench_generate(args.layers, args.width, args.heads, args.vocab, args.prompt, args.new_tokens,
                               args.rounds, device)
    finally:
        torch.set_num_threads(threads_before)  # --threads holds for this benchmark only
    print(f"greedy generation on {device} ({threads} threads) of {bench.new_tokens} new tokens "
          f"after a {bench.prompt_len}-token prompt, batch 1: a randomly initialised GPT ({args.layers} layers, "
          f"width {args.width}, {args.heads} heads, vocabulary {args.vocab}, "
          f"context {bench.prompt_len + bench.new_tokens}, "
          f"{bench.n_params:,} parameters; random weights: the time does not depend on them), "
          f"median of {args.rounds} interleaved rounds; both runs produce the same tokens")
    print(format_generate(bench))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .pretrained import load_pretrained, model_dir, pretrain

    path = model_dir(args.model, args.profile)
    if (path / "model.safetensors").is_file() and not args.force:
        print(f"already pre-trained: {path} (pass --force to train again)")
        return 0
    path = pretrain(args.model, args.profile, progress=not args.no_progress)
    loaded = load_pretrained(args.model, args.profile, train_if_missing=False)
    meta, history = loaded.meta, [h for h in loaded.history if "train_loss" in h]
    print(f"pre-trained {args.model} ({args.profile}): {meta['steps']} steps in {meta['train_seconds']} s on "
          f"{meta['device']}, train loss {history[0]['train_loss']:.3f} -> {history[-1]['train_loss']:.3f}")
    print(f"saved to {path} (our format) and {path / 'hf'} (transformers)")
    return 0


def _post_train(args: argparse.Namespace) -> int:
    from .post_training import assistant_dir, load_assistant, train_dpo, train_lora, train_sft

    path = assistant_dir(args.command, args.profile)
    if (path / "model.safetensors").is_file() and not args.force:
        print(f"already trained: {path} (pass --force to train again)")
        return 0
    train = {"sft": train_sft, "lora": train_lora, "dpo": train_dpo}[args.command]
    train(args.profile, progress=not args.no_progress)
    loaded = load_assistant(args.command, args.profile, train_if_missing=False)
    losses = [h["train_loss"] for h in loaded.history if "train_loss" in h]
    extra = f", {loaded.meta['n_pairs']} preference pairs" if "n_pairs" in loaded.meta else ""
    spec = loaded.meta["spec"].get("sft", loaded.meta["spec"])  # LoRA records the SFT spec it follows
    print(f"{args.command} ({args.profile}): {spec['max_steps']} steps in "
          f"{loaded.meta['train_seconds']} s{extra}, train loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"saved to {path} (our format) and {path / 'hf'} (transformers, with the chat template)")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .chat import stream_reply
    from .post_training import load_assistant
    from .tools import looks_like_call, run_with_tools

    loaded = load_assistant(args.stage, args.profile, train_if_missing=False)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print(f"assistant ({args.stage}, {args.profile}) from {loaded.path}; an empty line or Ctrl-D ends the chat")
    while True:
        try:
            text = input("你：").strip()
        except EOFError:
            print()
            return 0
        if not text:
            return 0
        messages.append({"role": "user", "content": text})
        try:
            print("助手：", end="", flush=True)
            pieces = []
            for piece in stream_reply(loaded.model, loaded.tokenizer, messages, args.max_tokens):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print()
            answer = "".join(pieces)
            if looks_like_call(answer):  # let the tools answer and the model read their result
                run = run_with_tools(loaded.model, loaded.tokenizer, messages, max_new_tokens=args.max_tokens)
                for call, result in run.calls:
                    print(f"  [工具 {call.name}({call.arguments}) → {result}]")
                for error in run.errors:
                    print(f"  [工具错误：{error}]")
                print(f"助手：{run.answer if run.answer is not None else '（没有回答）'}")
                messages = run.messages
            else:
                messages.append({"role": "assistant", "content": answer or "…"})
        except ValueError as err:  # the conversation outgrew the context
            print(f"\n（{err}；对话重新开始）")
            messages = messages[:1] if args.system else []


_LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def _without_launch_options(argv: list[str]) -> list[str]:
    """argv minus the launcher's options (torchrun would take them for its own), for the worker processes."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in _LAUNCH_OPTIONS)):
            out.append(arg)
    return out


def _train(args: argparse.Namespace) -> int:
    from . import distributed

    world = args.nproc * args.nnodes
    if world > 1 and not distributed.under_torchrun():  # re-run this very command in world processes
        return distributed.launch(_without_launch_options(args.argv), args.nproc, args.nnodes, args.node_rank,
                                  args.master_addr, args.master_port)
    meta = distributed.train_task(args.task, args.profile, args.steps, args.out, global_batch=args.batch, lr=args.lr,
                                  seed=args.seed, dropout=args.dropout, grad_accum=args.grad_accum, bf16=args.bf16,
                                  gradient_checkpointing=args.checkpointing, threads=args.threads or None,
                                  progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {args.model} on {args.task} ({args.profile}): {meta['steps']} steps, {meta['world_size']} "
              f"process(es) x {meta['per_process_batch']} examples x {meta['grad_accum']} micro-batches, backend "
              f"{meta['backend'] or 'none'}, {meta['seconds_per_step'] * 1000:.0f} ms/step, loss "
              f"{meta['losses'][0]:.3f} -> {meta['losses'][-1]:.3f}; saved to {args.out}")
    return 0


def _bounded(convert: type, ok, expected: str, out_of_range: str):
    """An argparse type: `convert(text)` that must satisfy `ok`, with messages naming what was expected."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{out_of_range}, got {value:g}" if convert is float
                                             else f"{out_of_range}, got {value}")
        return value
    return parse


_positive_int = _bounded(int, lambda v: v > 0, "expected a positive integer", "expected a positive integer")
_non_negative_int = _bounded(int, lambda v: v >= 0, "expected an integer ≥ 0", "expected an integer ≥ 0")
_wait_ms = _bounded(float, lambda v: 0 <= v <= 1000, "expected milliseconds", "the wait must be in [0, 1000] ms")
_seconds = _bounded(float, lambda v: 0 < v <= 86400, "expected seconds", "expected seconds in (0, 86400]")
_port = _bounded(int, lambda v: 0 <= v <= 65535, "expected a port number", "port must be in 0..65535")  # 0: any free


def _serve(args: argparse.Namespace) -> int:
    from .serving import serve

    serve(args.registry, args.host, args.port, log_level=args.log_level, access_log=not args.no_access_log,
          port_file=args.port_file, threads=args.threads, max_batch=args.max_batch,
          max_text_chars=args.max_text_chars, max_body_bytes=args.max_body_bytes, micro_batch=args.micro_batch,
          micro_batch_wait_ms=args.micro_batch_wait_ms, micro_batch_workers=args.micro_batch_workers,
          micro_batch_tokens=args.micro_batch_tokens, header_timeout=args.header_timeout,
          keep_alive_timeout=args.keep_alive_timeout, body_timeout=args.body_timeout, llm_dir=args.llm_dir,
          llm_name=args.llm_name, llm_max_batch=args.llm_max_batch, rag=args.rag)
    return 0


def _registry(args: argparse.Namespace) -> int:
    from .serving import ModelRegistry

    registry = ModelRegistry(args.registry)
    if args.action == "promote":
        card = registry.promote(args.name, args.version)
        print(f"promoted {card.name} {card.version} (sha256 {card.sha256[:12]})")
    elif args.action == "rollback":
        card = registry.rollback(args.name)
        print(f"rolled back {card.name} to {card.version} (sha256 {card.sha256[:12]})")
    else:
        cards, damaged = registry.scan()
        if not cards and not damaged:
            print(f"no models in {registry.root}")
        for entry in damaged:
            print(f"damaged: {entry.name} {entry.version or ''}: {entry.problem}", file=sys.stderr)
        for card in cards:
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in card.metrics.items()) or "-"
            mark = "*" if card.promoted else " "
            print(f"{mark} {card.name:<20} {card.version:<5} {card.task:<6} {card.architecture:<19} "
                  f"{card.created}  sha256 {card.sha256[:12]}  {metrics}")
    return 0


def _bench_llm_serve(args: argparse.Namespace) -> int:
    from .serving.llm_bench import bench_llm_serve, format_llm_serve
    from .transformer import GPT, GPTConfig

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=4736, max_len=128, d_model=128, n_heads=4, n_layers=4, dropout=0.0, attn_dropout=0.0)
    model = GPT(cfg).eval()
    rows = bench_llm_serve(model, tuple(args.concurrency), requests=args.requests, rounds=args.rounds)
    print(f"generation engine on the CPU ({torch.get_num_threads()} threads), a randomly initialised GPT of the "
          f"Chapter 2 size (4 layers, width 128, context 128; the time does not depend on the weights), "
          f"{args.requests} requests per row with prompts of 8–42 and replies of 8–64 tokens, greedy; "
          f"closed loop: each stream sends its next request when the last one ends; medians of {args.rounds} "
          "rounds, throughput ratio to one at a time with its range over rounds")
    print(format_llm_serve(rows))
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from .serving import bench_serve

    result = bench_serve(requests=args.requests, concurrency=args.concurrency)
    print("load test of `bigmodel-course serve` on 127.0.0.1 with tiny randomly initialised (untrained) models "
          "(a 1-layer GPT text classifier and a 1-layer ViT), batches of 4 texts / 4 digit images, "
          "half text and half image requests:")
    print(result.format())
    return 0 if result.errors == 0 else 1


def _ask(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from .rag.answer import REFUSE_BELOW, BookIndex, answer, format_answer
    from .rag.corpus import default_root

    threshold = REFUSE_BELOW if args.refuse_below is None else args.refuse_below
    start = time.perf_counter()
    index = BookIndex.load_or_build(args.root)
    loaded = time.perf_counter()
    result = answer(args.question, index, max_sentences=args.sentences, refuse_below=threshold)
    done = time.perf_counter()
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=1))
        return 0
    html = Path(args.root or default_root()) / "book" / "_build" / "html"
    print(format_answer(result, html if html.is_dir() else None))
    print(f"（索引加载 {1000 * (loaded - start):.0f} 毫秒，检索与摘句 {1000 * (done - loaded):.0f} 毫秒）")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the command line."""
    parser = argparse.ArgumentParser(prog="bigmodel-course", description="Companion tools of the book 大模型应用开发")
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("pretrain", help="pre-train the small BERT or GPT on the offline Chinese corpus")
    pre.add_argument("--model", choices=("bert", "gpt"), required=True)
    pre.add_argument("--profile", choices=("ci", "full"), default="full")
    pre.add_argument("--force", action="store_true", help="train again even if the cache holds the model")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    pre.set_defaults(func=_pretrain)
    for stage, what in (("sft", "supervised fine-tuning of the chat model on the instruction conversations"),
                        ("lora", "the same fine-tuning through LoRA adapters (peft)"),
                        ("dpo", "DPO of the SFT assistant on preference pairs of its own judged samples")):
        post = commands.add_parser(stage, help=what)
        post.add_argument("--profile", choices=("ci", "full"), default="full")
        post.add_argument("--force", action="store_true", help="train again even if the cache holds the model")
        post.add_argument("--no-progress", action="store_true", help="no progress bar")
        post.set_defaults(func=_post_train)
    chat = commands.add_parser("chat", help="talk to the assistant in the terminal (replies stream as generated)")
    chat.add_argument("--stage", choices=("sft", "dpo"), default="dpo")
    chat.add_argument("--profile", choices=("ci", "full"), default="full")
    chat.add_argument("--system", default="", help="a system message to start the conversation with")
    chat.add_argument("--max-tokens", type=int, default=64, help="most tokens per reply")
    chat.set_defaults(func=_chat)
    ask = commands.add_parser("ask", help="ask the book a question: quoted sentences with links to their sections")
    ask.add_argument("question", help="the question, in Chinese (e.g. \"int4 量化会让困惑度升高多少？\")")
    ask.add_argument("--sentences", type=int, default=3, help="most sentences quoted (default 3)")
    ask.add_argument("--root", default=None, help="the book's repository (default: the one this package is in)")
    ask.add_argument("--refuse-below", type=float, default=None,
                     help="answer only when the best passage's BM25 score reaches this (default: the threshold "
                          "chosen on the book's dev questions; another corpus needs its own)")
    ask.add_argument("--json", action="store_true", help="print the answer as JSON")
    ask.set_defaults(func=_ask)
    bench = commands.add_parser("bench", help="run a benchmark")
    which = bench.add_subparsers(dest="benchmark", required=True)
    att = which.add_parser("attention", help="formula vs fused vs torch.nn.MultiheadAttention")
    att.add_argument("--batch", type=int, default=8)
    att.add_argument("--length", type=int, default=256)
    att.add_argument("--width", type=int, default=256)
    att.add_argument("--heads", type=int, default=8)
    att.add_argument("--causal", action="store_true")
    _add_timing_args(att)
    att.set_defaults(func=_bench_attention)
    gpt = which.add_parser("gpt", help="training step of our GPT vs transformers GPT2LMHeadModel")
    gpt.add_argument("--layers", type=int, default=4)
    gpt.add_argument("--width", type=int, default=128)
    gpt.add_argument("--heads", type=int, default=4)
    gpt.add_argument("--context", type=int, default=128)
    gpt.add_argument("--vocab", type=int, default=5000)
    gpt.add_argument("--batch", type=int, default=16)
    _add_timing_args(gpt)
    gpt.set_defaults(func=_bench_gpt)
    comp = which.add_parser("compression", help="pruning, int8 quantization and distillation of the sentiment GPT")
    comp.add_argument("--profile", choices=("ci", "full"), default="full")
    comp.add_argument("--rounds", type=int, default=30)
    comp.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    comp.add_argument("--no-progress", action="store_true", help="no progress bar while training a missing student")
    comp.set_defaults(func=_bench_compression)
    gen = which.add_parser("generate", help="greedy decoding with vs without the KV cache")
    gen.add_argument("--new-tokens", type=_positive_int, default=256)
    gen.add_argument("--prompt", type=_positive_int, default=16, help="prompt length in tokens")
    gen.add_argument("--layers", type=int, default=4)
    gen.add_argument("--width", type=int, default=128)
    gen.add_argument("--heads", type=int, default=4)
    gen.add_argument("--vocab", type=int, default=4736)
    gen.add_argument("--rounds", type=int, default=5)
    gen.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (default 1: batch-1 decoding of a small model is a chain of tiny "
                          "operations, and more threads mostly add synchronisation; 0: torch's choice)")
    gen.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    gen.set_defaults(func=_bench_generate)
    llm = which.add_parser("llm-serve", help="one at a time vs static vs continuous batching of generation requests")
    llm.add_argument("--concurrency", type=_positive_int, nargs="+", default=[1, 4, 8, 16])
    llm.add_argument("--requests", type=_positive_int, default=32, help="requests per policy and concurrency")
    llm.add_argument("--rounds", type=_positive_int, default=3, help="repetitions of the whole grid (default 3)")
    llm.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)")
    llm.set_defaults(func=_bench_llm_serve)
    srv = which.add_parser("serve", help="load test of the model service with tiny random models")
    srv.add_argument("--requests", type=_positive_int, default=2000)
    srv.add_argument("--concurrency", type=_positive_int, default=16)
    srv.set_defaults(func=_bench_serve)
    serve = commands.add_parser("serve", help="serve the registry's promoted models over HTTP (FastAPI + uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free port)")
    serve.add_argument("--registry", default=None, help="registry folder (default: $BIGMODEL_REGISTRY or the cache)")
    serve.add_argument("--max-batch", type=_positive_int, default=64, help="most texts or images per request")
    serve.add_argument("--max-text-chars", type=_positive_int, default=512, help="longest text in characters")
    serve.add_argument("--max-body-bytes", type=_positive_int, default=1_000_000, help="largest request body")
    serve.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.add_argument("--threads", type=_positive_int, default=1, help="torch threads per forward pass (default 1)")
    serve.add_argument("--micro-batch", type=_non_negative_int, default=0,
                       help="gather concurrent text requests into one forward pass of up to N texts (0: off)")
    serve.add_argument("--micro-batch-wait-ms", type=_wait_ms, default=5.0,
                       help="longest wait for more requests to join a micro-batch (default 5 ms)")
    serve.add_argument("--micro-batch-workers", type=_positive_int, default=1,
                       help="micro-batches computed at the same time (default 1)")
    serve.add_argument("--micro-batch-tokens", type=_non_negative_int, default=1024,
                       help="cut a micro-batch into forward passes of similar text lengths, each at most this many "
                            "padded characters (0: one pass padded to the longest text; default 1024)")
    serve.add_argument("--header-timeout", type=_seconds, default=10.0,
                       help="seconds a connection has to send a complete request head (default 10)")
    serve.add_argument("--keep-alive-timeout", type=_positive_int, default=5,
                       help="seconds an idle kept-alive connection stays open (default 5)")
    serve.add_argument("--body-timeout", type=_seconds, default=30.0,
                       help="seconds a request body has to arrive completely, else 408 (default 30)")
    serve.add_argument("--llm-dir", default=None,
                       help="also serve this chat model folder (as `bigmodel-course sft|dpo` write them) through the "
                            "OpenAI-compatible /v1/chat/completions and /v1/completions; API keys, if any, come "
                            "from $BIGMODEL_LLM_KEYS as key:requests-per-minute pairs separated by commas")
    serve.add_argument("--llm-name", default="assistant", help="the model name clients send (default assistant)")
    serve.add_argument("--llm-max-batch", type=_positive_int, default=8,
                       help="sequences the generation engine decodes together (KV slots; default 8)")
    serve.add_argument("--rag", action="store_true",
                       help="also answer questions about the book at POST /v1/rag/ask (as `bigmodel-course ask`)")
    serve.add_argument("--port-file", default=None, help=argparse.SUPPRESS)  # background_server reads the port here
    serve.set_defaults(func=_serve)
    registry = commands.add_parser("registry", help="list, promote or roll back the models of the registry")
    actions = registry.add_subparsers(dest="action", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--registry", default=None, help="registry folder (default: $BIGMODEL_REGISTRY or the cache)")
    actions.add_parser("list", parents=[where], help="every version of every model (* = promoted)")
    promote = actions.add_parser("promote", parents=[where], help="make VERSION the version the service loads")
    promote.add_argument("name")
    promote.add_argument("version")
    rollback = actions.add_parser("rollback", parents=[where], help="promote the previously promoted version again")
    rollback.add_argument("name")
    registry.set_defaults(func=_registry)
    train = commands.add_parser("train", help="train our GPT, in one process or data-parallel (DDP via torchrun)")
    train.add_argument("--model", choices=("gpt",), default="gpt")
    train.add_argument("--task", choices=("lm", "sentiment"), default="lm")
    train.add_argument("--profile", choices=("ci", "full"), default="ci")
    train.add_argument("--steps", type=_positive_int, default=20)
    train.add_argument("--batch", type=_positive_int, default=32, help="global batch: split over processes")
    train.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--bf16", action="store_true", help="bf16 autocast")
    train.add_argument("--checkpointing", action="store_true", help="activation (gradient) checkpointing")
    train.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's choice)")
    train.add_argument("--nproc", type=_positive_int, default=1, help="processes on this machine (torchrun)")
    train.add_argument("--nnodes", type=_positive_int, default=1, help="machines taking part")
    train.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0..nnodes-1")
    train.add_argument("--master-addr", default="127.0.0.1", help="address of the node with rank 0")
    train.add_argument("--master-port", type=_port, default=29500)
    train.add_argument("--out", required=True, help="folder for model.safetensors and meta.json")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bigmodel-course`."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` re-runs it under torchrun
    for name in ("batch", "length", "width", "heads", "rounds", "layers", "context", "vocab", "max_tokens",
                 "sentences"):
        if getattr(args, name, 1) <= 0:
            print(f"bigmodel-course: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except ValueError as err:
        print(f"bigmodel-course: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
