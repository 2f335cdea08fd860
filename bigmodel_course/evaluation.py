"""Classification metrics (accuracy, per-class precision/recall/F1, confusion matrix, the most confident errors) and
the spread of repeated measurements."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 1:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} must be equal 1-D shapes")
    if pred.numel() == 0:
        raise ValueError("no predictions to evaluate")


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Share of predictions equal to the target."""
    _check(pred, target)
    return float((pred == target).float().mean())


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    _check(pred, target)
    if int(max(pred.max(), target.max())) >= num_classes or int(min(pred.min(), target.min())) < 0:
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def precision_recall_f1(pred: Tensor, target: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Per-class precision, recall and F1 (0 where undefined), plus their macro averages."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    precision = torch.where(cm.sum(0) > 0, tp / cm.sum(0).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(cm.sum(1) > 0, tp / cm.sum(1).clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1,
            "macro_precision": precision.mean(), "macro_recall": recall.mean(), "macro_f1": f1.mean()}


def classification_metrics(logits: Tensor, labels: Tensor | None) -> dict[str, float]:
    """Metrics from logits (N, C) for `Trainer(metrics_fn=...)`: accuracy and macro F1."""
    if labels is None:
        raise ValueError("classification metrics need labels")
    pred = logits.argmax(dim=-1)
    return {"accuracy": accuracy(pred, labels),
            "macro_f1": float(precision_recall_f1(pred, labels, logits.shape[-1])["macro_f1"])}


def confident_errors(probs: Tensor, target: Tensor, k: int) -> list[int]:
    """Indices of the (at most) k misclassified examples predicted with the highest probability, worst first."""
    if probs.dim() != 2 or probs.shape[0] != target.shape[0] or target.dim() != 1:
        raise ValueError(f"probs must be (N, C) and target (N,), got {tuple(probs.shape)} and {tuple(target.shape)}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    conf, pred = probs.max(dim=-1)
    wrong = (pred != target).nonzero().flatten()
    order = conf[wrong].argsort(descending=True, stable=True)
    return wrong[order][:k].tolist()


def calibrate_threshold(positive_probs: Tensor, target: Tensor) -> tuple[float, float]:
    """The threshold t of the rule "positive when P(positive) >= t" that maximises accuracy on held-out data
    (call it on validation, never on test), and that accuracy. Candidates are the probabilities themselves
    (every distinct rule), one above them all, and 0.5; ties go to the threshold closest to 0.5."""
    if positive_probs.dim() != 1 or positive_probs.shape != target.shape or positive_probs.numel() == 0:
        raise ValueError(f"need matching non-empty 1-D probabilities and labels, got {tuple(positive_probs.shape)} "
                         f"and {tuple(target.shape)}")
    if not set(target.unique().tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    p = positive_probs.float()
    candidates = torch.cat([p.unique(), p.new_tensor([0.5, float(p.max()) + 1.0])])
    accs = ((p[None, :] >= candidates[:, None]) == target.bool()[None, :]).double().mean(1)
    tied = candidates[accs == accs.max()]
    return float(tied[(tied - 0.5).abs().argmin()]), float(accs.max())


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (nan for a single value), min, max and n of repeated measurements
    (seeds, rounds): the spread every comparison in the book is read against."""
    if not values:
        raise ValueError("no values to summarise")
    t = torch.tensor(values, dtype=torch.float64)
    sd = float(t.std()) if len(values) > 1 else math.nan
    return {"mean": float(t.mean()), "sd": sd, "min": float(t.min()), "max": float(t.max()), "n": len(values)}


def format_spread(values: list[float], fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    """'mean ± sample standard deviation' of repeated measurements for a table cell, each number written with
    `fmt` after multiplying by `scale` (e.g. 100 for percent); a single value shows just itself."""
    s = spread([v * scale for v in values])
    return fmt.format(s["mean"]) + ("" if s["n"] == 1 else f" ± {fmt.format(s['sd'])}")


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean of repeated measurements (e.g. paired differences over seeds) with its Student-t confidence interval:
    mean, low, high, level and n. An interval that contains 0 means no measurable difference."""
    from scipy.stats import t as student_t

    if len(values) < 2:
        raise ValueError(f"need at least 2 values for an interval, got {len(values)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("values must be finite")
    s = spread(values)
    half = float(student_t.ppf(0.5 + level / 2, s["n"] - 1)) * s["sd"] / math.sqrt(s["n"])
    return {"mean": s["mean"], "low": s["mean"] - half, "high": s["mean"] + half, "level": level, "n": s["n"]}


def mcnemar(right_a: Tensor, right_b: Tensor) -> dict:
    """Exact McNemar test of two classifiers scored on the same examples (`right_*`: bool per example, True where
    that classifier is correct): the examples only a gets right, only b gets right, and the two-sided p-value of
    "either is as likely to win a disagreement" (binomial with p = 1/2 over the disagreements; 1.0 when none)."""
    if right_a.dim() != 1 or right_a.shape != right_b.shape:
        raise ValueError(f"need two matching 1-D boolean tensors, got {tuple(right_a.shape)} and "
                         f"{tuple(right_b.shape)}")
    a, b = right_a.bool(), right_b.bool()
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 0.5
    return {"only_a": only_a, "only_b": only_b, "p": min(1.0, 2 * tail)}
