"""The canary decision is made from the canary's own live metrics against the stable version's."""

import math

import pytest

from bigmodel_course.serving import VersionStats, canary_verdict
from bigmodel_course.serving.canary import _one_sided_p


def stats(n, errors=0, correct=None, ms=10.0):
    return VersionStats(requests=n, errors=errors, latency_ms=tuple([ms] * max(n - errors, 1)), correct=correct)


def test_a_canary_as_good_as_the_stable_version_is_promoted():
    verdict = canary_verdict(stats(600, 3, correct=500), stats(150, 1, correct=125))
    assert verdict.promote and [c.metric for c in verdict.checks] == ["error_rate", "accuracy", "median_latency_ms"]
    assert not any(c.worse for c in verdict.checks)


def test_each_worse_metric_of_the_canary_rolls_it_back():
    worse_accuracy = canary_verdict(stats(629, correct=529), stats(171, correct=85))  # 84 % vs 50 %
    assert not worse_accuracy.promote and [c.metric for c in worse_accuracy.checks if c.worse] == ["accuracy"]
    worse_errors = canary_verdict(stats(600, 0), stats(150, 20))
    assert not worse_errors.promote and worse_errors.checks[0].worse and worse_errors.checks[0].canary == 20 / 150
    slower = canary_verdict(stats(600, ms=10.0), stats(150, ms=13.0), max_latency_ratio=1.2)
    assert not slower.promote and slower.checks[-1].worse
    assert canary_verdict(stats(600, ms=10.0), stats(150, ms=11.0), max_latency_ratio=1.2).promote


def test_a_small_difference_on_few_requests_is_not_called_worse():
    # one more error among 20 canary requests is not evidence at level 0.05
    assert canary_verdict(stats(600, 6), stats(20, 1)).promote


def test_one_sided_p_is_the_exact_hypergeometric_tail():
    # 1 failure among 20 canary requests, 6 among 600 stable ones: P(canary gets >= 1 of the 7 failures)
    tail = 1 - math.comb(613, 20) / math.comb(620, 20)
    assert _one_sided_p(6, 600, 1, 20) == pytest.approx(tail)
    assert _one_sided_p(100, 1000, 10, 200) > 0.5  # the canary is better: no evidence that it is worse
    assert _one_sided_p(0, 10, 0, 10) == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="errors <= requests"):
        VersionStats(requests=5, errors=6, latency_ms=())
    with pytest.raises(ValueError, match="correct must be"):
        VersionStats(requests=5, errors=1, latency_ms=(), correct=5)
    with pytest.raises(ValueError, match="answered no requests"):
        canary_verdict(stats(10), VersionStats(0, 0, ()))
