"""`bigmodel-course ask` on the evaluation questions: the refusal threshold chosen on the dev half, then the test
half measured once — how often the answering section is among the sections shown, how often a question the book
does not answer is refused, and how long an answer takes once the index is loaded.

    PYTHONPATH=. .venv/bin/python tools/rag_ask_eval.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bigmodel_course.rag.answer import K_SECTIONS, REFUSE_BELOW, BookIndex, answer
from bigmodel_course.rag.questions import OUT_OF_SCOPE, load_questions


def best_scores(index: BookIndex, questions: list[str]) -> np.ndarray:
    """The best chunk score of each question (0 when no chunk shares a word with it)."""
    return np.array([(index.sections(q, 1) or [("", 0.0, [])])[0][1] for q in questions])


def outcome(index: BookIndex, split: str, threshold: float) -> dict[str, int]:
    """Counts of answered-with-the-right-section, answered-wrong, wrongly refused, rightly refused, wrongly answered."""
    qs = load_questions(split)
    found = [bool(q.gold_doc_ids & {d for d, _, _ in index.sections(q.question, K_SECTIONS)}) for q in qs]
    answered = best_scores(index, [q.question for q in qs]) >= threshold
    oos_answered = best_scores(index, list(OUT_OF_SCOPE[split])) >= threshold
    return {"right section shown": int(sum(a and f for a, f in zip(answered, found))),
            "answered, section missed": int(sum(a and not f for a, f in zip(answered, found))),
            "wrongly refused": int((~answered).sum()), "rightly refused": int((~oos_answered).sum()),
            "wrongly answered": int(oos_answered.sum())}


def main() -> None:
    index = BookIndex.load_or_build()
    grid = np.round(np.arange(0.0, 10.0, 0.05), 2)
    good = np.array([(o := outcome(index, "dev", t))["right section shown"] + o["rightly refused"] for t in grid])
    best = grid[good == good.max()]
    print(f"dev: best thresholds {best.min():.2f}–{best.max():.2f} (middle {np.median(best):.2f}); "
          f"REFUSE_BELOW in answer.py = {REFUSE_BELOW}")
    for split in ("dev", "test"):
        o = outcome(index, split, REFUSE_BELOW)
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
