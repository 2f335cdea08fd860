"""BM25, the dense bi-encoder and their hybrid (reciprocal-rank fusion) over the book's own sections: recall@1,
recall@5 and MRR on the evaluation questions.

Every choice is made on the dev half: BM25's chunk size and stop words, the dense retriever's chunk size and
training recipe (the profile's `DENSE_SPECS` entry and the variants named with --variant), the fusion constant.
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

from bigmodel_course.rag.bm25 import BM25Index, document_frequency_table, jieba_tokenize
from bigmodel_course.rag.chunking import chunk_documents
from bigmodel_course.rag.corpus import load_book_sections
from bigmodel_course.rag.dense import DENSE_SPECS, DenseIndex, hybrid_ranking, load_dense, section_ranking, variant
from bigmodel_course.rag.evaluation import mrr, recall_at_k
from bigmodel_course.rag.questions import load_questions

BM25_CHARS = (300, 600)
STOP_FRACTION = 0.5  # the stop-word variant: tokens in more than half of the chunks
DENSE_CHARS = (60, 110)  # the encoder reads at most 128 characters (title included)
RRF_KS = (3, 10, 30, 60)


def metrics(rankings: list[list[str]], questions) -> dict[str, float]:
    """Mean recall@1, recall@5 and MRR of section rankings, one per question."""
    return {"R@1": float(np.mean([recall_at_k(r, q.gold_doc_ids, 1) for r, q in zip(rankings, questions)])),
            "R@5": float(np.mean([recall_at_k(r, q.gold_doc_ids, 5) for r, q in zip(rankings, questions)])),
            "MRR": float(np.mean([mrr(r, q.gold_doc_ids) for r, q in zip(rankings, questions)]))}


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

    docs = load_book_sections()
    dev, test = load_questions("dev"), load_questions("test")
    print(f"{len(docs)} book sections; {len(dev)} dev and {len(test)} test questions\n")
    print("| retriever | R@1 | R@5 | MRR | split |\n|---|---|---|---|---|")

    # BM25: chunk size x stop words, on dev
    bm25 = {}
    for max_chars in BM25_CHARS:
        chunks = chunk_documents(docs, max_chars=max_chars, overlap=1)
        table = document_frequency_table((jieba_tokenize(f"{c.title}\n{c.text}") for c in chunks), top=500)
        for stop_name, stop in (("none", set()), (f"df>{STOP_FRACTION}",
                                                  {t for t, _, share in table if share > STOP_FRACTION})):
            index = BM25Index.build(chunks, stopwords=stop)
            sections = [c.doc_id for c in chunks]
            name = f"BM25 {max_chars} chars, stop words {stop_name}"
            ranks = {q.qid: section_ranking(index.scores(q.question), sections) for q in dev + test}
            bm25[name] = (index, sections, ranks)
            print(row(name, metrics([ranks[q.qid] for q in dev], dev), "dev"), flush=True)
    best_bm25 = max(bm25, key=lambda n: (metrics([bm25[n][2][q.qid] for q in dev], dev)["R@5"],
                                         metrics([bm25[n][2][q.qid] for q in dev], dev)["MRR"]))

    # dense: recipe x chunk size, on dev
    specs = ([] if args.no_default else [("recipe " + args.profile, None)]) + [
        (v, parse_variant(v, args.profile)) for v in args.variant]
    dense = {}
    for recipe, spec in specs:
        start = time.perf_counter()
        encoder = load_dense(args.profile, spec=spec, progress=False)
        print(f"<!-- {recipe}: loaded in {time.perf_counter() - start:.0f} s, trained in "
              f"{encoder.meta['train_seconds']} s; loss {encoder.meta['history'][0]['loss']:.3f} -> "
              f"{np.mean([h['loss'] for h in encoder.meta['history'][-20:]]):.3f} (mean of the last 20) -->",
              flush=True)
        for max_chars in DENSE_CHARS:
            chunks = chunk_documents(docs, max_chars=max_chars, overlap=1)
            index = DenseIndex.build(chunks, encoder)
            sections = [c.doc_id for c in chunks]
            ranks = {q.qid: section_ranking(index.scores(q.question), sections) for q in dev + test}
            name = f"dense ({recipe}), {max_chars} chars"
            dense[name] = (index, sections, ranks)
            print(row(name, metrics([ranks[q.qid] for q in dev], dev), "dev"), flush=True)

    # hybrid: BM25 (each chunk size, no stop words) with every dense setting, fusion constant k; BM25 ranks only the
    # sections with a chunk sharing a word with the question (as `hybrid_ranking` does)
    hybrid = {}
    for bm_name, (bm_index, bm_sections, _) in bm25.items():
        if not bm_name.endswith("none"):
            continue
        for name, (d_index, d_sections, _) in dense.items():
            for k in RRF_KS:
                fused = {q.qid: [s for s, _ in hybrid_ranking(q.question, bm_index, bm_sections, d_index, d_sections,
                                                              k=k)] for q in dev + test}
                hname = f"hybrid RRF k={k}: {bm_name} + {name}"
                hybrid[hname] = fused
                print(row(hname, metrics([fused[q.qid] for q in dev], dev), "dev"), flush=True)

    def best(table):
        return max(table, key=lambda n: (metrics([table[n][q.qid] for q in dev], dev)["R@5"],
                                         metrics([table[n][q.qid] for q in dev], dev)["MRR"]))

    chosen = {"BM25": (best_bm25, bm25[best_bm25][2])}
    if dense:
        dense = {name: ranks for name, (_, _, ranks) in dense.items()}
        chosen["dense"] = (best(dense), dense[best(dense)])
        chosen["hybrid"] = (best(hybrid), hybrid[best(hybrid)])
    print("\n| retriever (best dev setting: recall@5, then MRR) | R@1 | R@5 | MRR | split |\n|---|---|---|---|---|")
    for kind, (name, ranks) in chosen.items():
        print(row(f"{kind}: {name}", metrics([ranks[q.qid] for q in dev], dev), "dev"))
    if args.test:
        for kind, (name, ranks) in chosen.items():
            print(row(f"{kind}: {name}", metrics([ranks[q.qid] for q in test], test), "test, once"))


if __name__ == "__main__":
    main()
