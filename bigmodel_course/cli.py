"""The `bigmodel-course` command."""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bigmodel-course`."""
    args = build_parser().parse_args(argv)
    for name in ("batch", "length", "width", "heads", "rounds", "layers", "context", "vocab"):
        if getattr(args, name, 1) <= 0:
            print(f"bigmodel-course: --{name} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except ValueError as err:
        print(f"bigmodel-course: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
