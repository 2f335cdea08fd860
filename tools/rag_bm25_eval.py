"""BM25 over the book's own sections: recall@1, recall@5 and MRR on the evaluation questions.

Every setting (chunk size, with or without stop words taken from the corpus's document frequencies) is measured on
the dev half; the setting with the best dev MRR is then measured once on the test half.

    PYTHONPATH=. .venv/bin/python tools/rag_bm25_eval.py
"""

from __future__ import annotations

import numpy as np

from bigmodel_course.rag.bm25 import BM25Index, document_frequency_table, jieba_tokenize
from bigmodel_course.rag.chunking import chunk_documents
from bigmodel_course.rag.corpus import load_book_sections
from bigmodel_course.rag.evaluation import mrr, recall_at_k
from bigmodel_course.rag.questions import load_questions

MAX_CHARS = (150, 300, 600)
OVERLAP = 1  # sentences
STOP_FRACTIONS = (0.5, 0.2)  # stop words: tokens found in more than this share of the chunks


def evaluate(index: BM25Index, chunk_docs: list[str], questions) -> dict[str, float]:
    """Mean recall@1, recall@5 and MRR over questions, ranking sections by their best chunk."""
    r1, r5, rr = [], [], []
    for q in questions:
        order = np.argsort(-index.scores(q.question), kind="stable")
        ranked = [chunk_docs[i] for i in order]
        r1.append(recall_at_k(ranked, q.gold_doc_ids, 1))
        r5.append(recall_at_k(ranked, q.gold_doc_ids, 5))
        rr.append(mrr(ranked, q.gold_doc_ids))
    return {"recall@1": float(np.mean(r1)), "recall@5": float(np.mean(r5)), "MRR": float(np.mean(rr))}


def main() -> None:
    docs = load_book_sections()
    dev, test = load_questions("dev"), load_questions("test")
    print(f"{len(docs)} book sections; {len(dev)} dev and {len(test)} test questions")
    rows, setups = [], {}
    for max_chars in MAX_CHARS:
        chunks = chunk_documents(docs, max_chars=max_chars, overlap=OVERLAP)
        table = document_frequency_table((jieba_tokenize(f"{c.title}\n{c.text}") for c in chunks), top=500)
        if max_chars == MAX_CHARS[1]:
            print("most frequent tokens (document frequency, share of chunks):",
                  ", ".join(f"{t} {n} {f:.2f}" for t, n, f in table[:15]))
        stop_sets = [{tok for tok, _, share in table if share > limit} for limit in STOP_FRACTIONS]
        variants = [("none", set())] + [(f"df>{limit} ({len(s)})", s) for limit, s in zip(STOP_FRACTIONS, stop_sets)]
        for name, stopwords in variants:
            index = BM25Index.build(chunks, stopwords=stopwords)
            chunk_docs = [c.doc_id for c in chunks]
            setups[(max_chars, name)] = (index, chunk_docs)
            rows.append((max_chars, len(chunks), name, evaluate(index, chunk_docs, dev)))
    print(f"\n{'max_chars':>9} {'chunks':>6}  {'stop words':<14} {'R@1':>6} {'R@5':>6} {'MRR':>6}   (dev)")
    for max_chars, n, name, m in rows:
        print(f"{max_chars:>9} {n:>6}  {name:<14} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['MRR']:6.3f}")
    best = max(rows, key=lambda row: row[3]["MRR"])
    m = evaluate(*setups[(best[0], best[2])], test)
    print(f"\ntest, once, with the best dev setting (max_chars={best[0]}, stop words {best[2]}):")
    print(f"{best[0]:>9} {best[1]:>6}  {best[2]:<14} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['MRR']:6.3f}  (test)")
    print("its stop words:", " ".join(sorted(setups[(best[0], best[2])][0].stopwords)) or "-")


if __name__ == "__main__":
    main()
