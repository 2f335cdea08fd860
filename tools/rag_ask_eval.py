"""`bigmodel-course ask` on the evaluation questions: the refusal threshold chosen on the dev half, then the test
half measured once — how often the answering section is among the sections shown, how often a question the book
does not answer is refused, and how long an answer takes once the index is loaded. The index covers the benchmark's
corpus (`bigmodel_course.rag.benchmark.evaluation_corpus`), as in Chapter 7's notebook.

    PYTHONPATH=. .venv/bin/python tools/rag_ask_eval.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bigmodel_course.rag.answer import REFUSE_BELOW, answer
from bigmodel_course.rag.benchmark import (choose_threshold, evaluation_book_index, evaluation_corpus,
                                           refusal_outcome, refusal_scores)
from bigmodel_course.rag.questions import OUT_OF_SCOPE, load_questions


def main() -> None:
    index = evaluation_book_index(evaluation_corpus())
    scores = {split: refusal_scores(index, load_questions(split), OUT_OF_SCOPE[split]) for split in ("dev", "test")}
    lo, hi, middle = choose_threshold(scores["dev"], np.round(np.arange(0.0, 10.0, 0.05), 2))
    print(f"dev: best thresholds {lo:.2f}–{hi:.2f} (middle {middle:.2f}); REFUSE_BELOW in answer.py = {REFUSE_BELOW}")
    for split in ("dev", "test"):
        o = refusal_outcome(scores[split], REFUSE_BELOW)
        print(f"{split} ({len(load_questions(split))} book questions, {len(OUT_OF_SCOPE[split])} others): {o}")
    times = []
    for q in load_questions("dev")[:40]:
        start = time.perf_counter()
        answer(q.question, index)
        times.append(time.perf_counter() - start)
    print(f"answer time with the index loaded: median {1000 * statistics.median(times):.1f} ms, "
          f"max {1000 * max(times):.1f} ms")


if __name__ == "__main__":
    main()
