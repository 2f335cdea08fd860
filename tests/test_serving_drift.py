"""Drift checks: PSI against an independent reference (symmetric KL divergence), binning, the alert threshold
on real review windows (no alert) and on news text and very long reviews (alert)."""

import random

import numpy as np
import pytest
from scipy.stats import entropy

from bigmodel_course.data import review_splits
from bigmodel_course.data.corpora import load_peoples_daily
from bigmodel_course.serving.drift import (
    DriftMonitor,
    DriftReport,
    char_histogram,
    length_edges,
    length_histogram,
    psi,
)


def test_psi_is_the_symmetric_kl_divergence():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random(8) + 0.05, rng.random(8) + 0.05
        p, q = a / a.sum(), b / b.sum()
        assert psi(a, b, eps=1e-12) == pytest.approx(entropy(q, p) + entropy(p, q), rel=1e-9)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(2) + 0.25 * np.log(1.5))
    assert psi([3, 7, 0], [30, 70, 0]) == pytest.approx(0.0, abs=1e-12)  # counts are normalised


def test_psi_stays_finite_with_empty_bins_and_rejects_bad_histograms():
    # empty bins count as eps = 1e-4: p = (1, 1e-4)/1.0001, q = (1e-4, 1)/1.0001, both terms (p - q)·ln(p/q) equal
    assert psi([1, 0], [0, 1]) == pytest.approx(2 * (1 - 1e-4) / (1 + 1e-4) * np.log(1e4), rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        psi([1, -1], [1, 1])
    with pytest.raises(ValueError, match="empty"):
        psi([0, 0], [1, 1])
    with pytest.raises(ValueError, match="eps"):
        psi([1, 1], [1, 1], eps=0)


def test_length_bins_and_histograms():
    edges = length_edges(list(range(1, 101)), bins=4)
    np.testing.assert_allclose(edges, np.quantile(np.arange(1, 101), [0.25, 0.5, 0.75]))
    texts = ["a" * n for n in (1, 30, 26, 60, 99)]
    np.testing.assert_array_equal(length_histogram(texts, edges), [1, 2, 1, 1])  # edges 25.75, 50.5, 75.25
    assert len(length_edges([5] * 50, bins=10)) == 1  # equal quantiles collapse to one edge
    with pytest.raises(ValueError, match="bins"):
        length_edges([1, 2], bins=1)
    np.testing.assert_array_equal(char_histogram(["好好吗", "x"], ["好", "吗"]), [2, 1, 1])


def test_monitor_keeps_statistics_not_texts_and_checks_input():
    monitor = DriftMonitor.fit(["很好", "不好用", "还行吧"], top_chars=3)
    assert len(monitor.vocabulary) == 3 and monitor.vocabulary[0] == "好"  # most frequent first
    assert not any(isinstance(v, list) and "很好" in v for v in vars(monitor).values())
    with pytest.raises(ValueError, match="non-empty list"):
        DriftMonitor.fit([])
    with pytest.raises(ValueError, match="threshold"):
        DriftMonitor.fit(["a"], threshold=0)
    with pytest.raises(ValueError, match=r"live texts\[1\] must be a string"):
        monitor.check(["好", 3])
    with pytest.raises(ValueError, match="all empty"):
        monitor.check(["", ""])


def test_report_alert_and_format():
    assert DriftReport(10, 0.05, 0.21, 0.2).alert
    assert not DriftReport(10, 0.05, 0.19, 0.2).alert
    assert "ALERT" in DriftReport(10, 0.3, 0.0, 0.2).format()


@pytest.fixture(scope="module")
def reviews():
    splits = review_splits(seed=0)
    return splits, DriftMonitor.fit(splits.train_texts)


def test_windows_of_held_out_reviews_do_not_alert(reviews):
    splits, monitor = reviews
    rng = random.Random(0)
    for _ in range(10):
        report = monitor.check(rng.sample(splits.test_texts, 300))
        assert not report.alert, report.format()
        assert max(report.length_psi, report.char_psi) < monitor.threshold / 2


def test_news_and_very_long_reviews_alert(reviews):
    splits, monitor = reviews
    rng = random.Random(0)
    news = monitor.check(rng.sample(load_peoples_daily(), 300))
    assert news.alert and news.char_psi > monitor.threshold, news.format()
    long_reviews = [t for t in splits.test_texts if len(t) > 150]
    long = monitor.check(long_reviews[:300])
    assert long.alert and long.length_psi > monitor.threshold, long.format()
