import time

import numpy as np
import pytest

from bigmodel_course.timing import percentiles, timed


@pytest.mark.parametrize("samples", [[7.0], [1, 2, 3, 100], list(np.random.default_rng(0).exponential(5.0, 999))])
def test_percentiles_equal_numpy_linear_interpolation(samples):
    qs = (0, 25, 50, 90, 99, 99.9, 100)
    assert percentiles(samples, qs) == pytest.approx(tuple(np.percentile(samples, qs)), rel=1e-12, abs=0)


def test_percentiles_on_known_data():
    p50, p99 = percentiles([4.0, 1.0, 3.0, 2.0])  # unsorted input; defaults are p50 and p99
    assert p50 == 2.5 and p99 == pytest.approx(3.97)
    assert percentiles(range(101), (10, 50)) == (10.0, 50.0)
    assert all(type(v) is float for v in percentiles([1, 2]))


def test_percentiles_reject_bad_input_clearly():
    with pytest.raises(ValueError, match="no timings"):
        percentiles([])
    with pytest.raises(ValueError, match=r"percentiles must lie in \[0, 100\], got \[101\]"):
        percentiles([1.0], (50, 101))
    with pytest.raises(ValueError, match="finite"):
        percentiles([1.0, float("nan")])
    with pytest.raises(ValueError, match="flat sequence"):
        percentiles([[1.0, 2.0]])


def test_timed_returns_result_and_seconds_and_syncs_around_the_call():
    events = []

    def work() -> str:
        events.append("call")
        time.sleep(0.01)
        return "done"

    result, seconds = timed(work, sync=lambda: events.append("sync"))
    assert result == "done" and 0.009 < seconds < 5
    assert events == ["sync", "call", "sync"]
    assert timed(lambda: 3)[0] == 3


def test_ratio_spread_against_statistics_and_its_verdict():
    from statistics import median, quantiles

    from bigmodel_course.timing import ratio_spread

    base = [2.0, 2.2, 1.8, 2.4, 2.0, 2.1]
    other = [1.0, 1.0, 1.2, 1.0, 1.1, 1.0]
    ratios = [a / b for a, b in zip(base, other)]
    s = ratio_spread(base, other)
    q = quantiles(ratios, n=4)
    assert (s.q1, s.median, s.q3) == pytest.approx((q[0], median(ratios), q[2]))
    assert s.measurable  # all ratios well above 1
    same = ratio_spread([1.0, 1.1, 0.9, 1.0], [1.05, 1.0, 1.0, 0.95])
    assert same.q1 <= 1.0 <= same.q3 and not same.measurable
    assert ratio_spread([3.0], [1.5]) == type(s)(2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="same rounds"):
        ratio_spread([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        ratio_spread([1.0], [0.0])
