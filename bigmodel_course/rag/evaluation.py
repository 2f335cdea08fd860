"""Ranking metrics for retrieval (recall@k, reciprocal rank) and reciprocal rank fusion of several rankings."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence


def _gold_set(gold_ids) -> set:
    gold = {gold_ids} if isinstance(gold_ids, str) else set(gold_ids)
    if not gold:
        raise ValueError("gold_ids is empty: a question needs at least one answering id")
    return gold


def _dedupe(ranked_ids: Sequence[Hashable]) -> list:
    if isinstance(ranked_ids, str):
        raise ValueError("ranked_ids must be a sequence of ids, not a string")
    return list(dict.fromkeys(ranked_ids))


def recall_at_k(ranked_ids: Sequence[Hashable], gold_ids: Iterable[Hashable] | str, k: int) -> float:
    """Fraction of the gold ids found among the first `k` distinct ranked ids (1.0 or 0.0 for a single gold id).

    Repeated ids in the ranking (several chunks of one section) count once, at their first position.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    gold = _gold_set(gold_ids)
    return len(gold & set(_dedupe(ranked_ids)[:k])) / len(gold)


def mrr(ranked_ids: Sequence[Hashable], gold_ids: Iterable[Hashable] | str) -> float:
    """Reciprocal rank of the first gold id among the distinct ranked ids (0.0 if none is ranked).

    This is one question's term; the mean over questions is the mean reciprocal rank (MRR).
    """
    gold = _gold_set(gold_ids)
    for rank, item in enumerate(_dedupe(ranked_ids), start=1):
        if item in gold:
            return 1.0 / rank
    return 0.0


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: int = 60) -> list[tuple[Hashable, float]]:
    """Fuse rankings (Cormack et al., 2009): score(id) = sum over rankings of 1 / (k + rank), ranks from 1.

    Returns (id, score) best first; ties keep the order in which ids were first met. An id repeated inside one
    ranking counts at its first rank only.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 0:
        raise ValueError(f"k must be a number >= 0, got {k!r}")
    if isinstance(rankings, str) or len(rankings) == 0:
        raise ValueError("rankings must be a non-empty sequence of rankings")
    scores: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(_dedupe(ranking), start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: n for n, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))
