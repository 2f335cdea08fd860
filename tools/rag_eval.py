"""BM25, the dense bi-encoder and their hybrid (reciprocal-rank fusion) over the book's own sections: recall@1,
recall@5 and MRR on the evaluation questions.

Every choice is made on the dev half: BM25's chunk size and stop words, the dense retriever's chunk size and
training recipe (the profile's `DENSE_SPECS` entry and the variants named with --variant), the fusion constant.
The logic lives in `bigmodel_course.rag.benchmark` (Chapter 7's notebook runs the same); this is its command line.
With --test, the best dev setting of each retriever is then measured once on the test half.

    PYTHONPATH=. .venv/bin/python tools/rag_eval.py                        # dev only
    PYTHONPATH=. .venv/bin/python tools/rag_eval.py --variant temperature=0.1 --variant steps=800
    PYTHONPATH=. .venv/bin/python tools/rag_eval.py --test                 # + the test half, once

A variant not yet in the cache is trained first (each one's training time is printed).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

import numpy as np

from bigmodel_course.rag.benchmark import evaluation_corpus, metrics, run_benchmark
from bigmodel_course.rag.dense import DENSE_SPECS, load_dense, variant
from bigmodel_course.rag.questions import load_questions


def parse_variant(text: str, profile: str):
    """'temperature=0.1,steps=800' -> the profile's DenseSpec with those fields changed."""
    types = {f.name: f.type for f in fields(DENSE_SPECS[profile])}
    changes = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"unknown DenseSpec field {name!r}")
        kind = types[name]
        changes[name] = (int(value) if "int" in kind and "." not in value else
                         float(value) if ("float" in kind or "int" in kind) else value)
    return variant(profile, **changes)


def row(name: str, m: dict[str, float], split: str) -> str:
    return f"| {name} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['MRR']:.3f} | {split} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="full", help="dense bi-encoder profile (ci or full)")
    parser.add_argument("--variant", action="append", default=[], help="DenseSpec changes, e.g. temperature=0.1")
    parser.add_argument("--no-default", action="store_true", help="skip the profile's own recipe")
    parser.add_argument("--test", action="store_true", help="measure the best dev settings once on the test half")
    args = parser.parse_args()

    docs = evaluation_corpus()
    dev, test = load_questions("dev"), load_questions("test")
    print(f"{len(docs)} book sections; {len(dev)} dev and {len(test)} test questions\n")

    specs = ([] if args.no_default else [("recipe " + args.profile, None)]) + [
        (v, parse_variant(v, args.profile)) for v in args.variant]
    encoders = {}
    for recipe, spec in specs:
        start = time.perf_counter()
        encoder = load_dense(args.profile, spec=spec, progress=False)
        encoders[recipe] = encoder
        print(f"<!-- {recipe}: loaded in {time.perf_counter() - start:.0f} s, trained in "
              f"{encoder.meta['train_seconds']} s; loss {encoder.meta['history'][0]['loss']:.3f} -> "
              f"{np.mean([h['loss'] for h in encoder.meta['history'][-20:]]):.3f} (mean of the last 20) -->",
              flush=True)

    bench = run_benchmark(docs, dev, test, encoders)
    print("| retriever | R@1 | R@5 | MRR | split |\n|---|---|---|---|---|")
    for settings in bench.settings.values():
        for s in settings:
            print(row(s.name, metrics(s.rankings, dev), "dev"))
    print("\n| retriever (best dev setting: recall@5, then MRR) | R@1 | R@5 | MRR | split |\n|---|---|---|---|---|")
    for kind, s in bench.chosen.items():
        print(row(f"{kind}: {s.name}", metrics(s.rankings, dev), "dev"))
    if args.test:
        for kind, s in bench.chosen.items():
            print(row(f"{kind}: {s.name}", metrics(s.rankings, test), "test, once"))


if __name__ == "__main__":
    main()
