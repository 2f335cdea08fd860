import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix as sk_confusion, precision_recall_fscore_support

from bigmodel_course.evaluation import (
    accuracy, calibrate_threshold, classification_metrics, confident_errors, confusion_matrix, format_spread,
    mcnemar, mean_interval, precision_recall_f1,
)


def test_metrics_equal_scikit_learn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (300,), generator=g)
    pred = torch.where(torch.rand(300, generator=g) < 0.6, target, torch.randint(0, 4, (300,), generator=g))
    pred[pred == 3] = 2  # class 3 is never predicted: precision undefined -> 0
    assert accuracy(pred, target) == pytest.approx(accuracy_score(target, pred))
    assert confusion_matrix(pred, target, 4).tolist() == sk_confusion(target, pred, labels=range(4)).tolist()
    p, r, f, _ = precision_recall_fscore_support(target, pred, labels=range(4), zero_division=0)
    ours = precision_recall_f1(pred, target, 4)
    torch.testing.assert_close(ours["precision"], torch.tensor(p))
    torch.testing.assert_close(ours["recall"], torch.tensor(r))
    torch.testing.assert_close(ours["f1"], torch.tensor(f))
    assert float(ours["macro_f1"]) == pytest.approx(f.mean())


def test_classification_metrics_from_logits_and_errors():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    m = classification_metrics(logits, torch.tensor([0, 1, 1]))
    assert m["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        accuracy(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 2\)"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="no predictions"):
        accuracy(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="need labels"):
        classification_metrics(logits, None)


def test_confident_errors_orders_wrong_predictions_by_confidence():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]])
    target = torch.tensor([1, 1, 1, 0, 0])  # wrong: 0 (0.9), 2 (0.6), 3 (0.95)
    assert confident_errors(probs, target, 2) == [3, 0]
    assert confident_errors(probs, target, 10) == [3, 0, 2]
    assert confident_errors(probs, torch.tensor([0, 1, 0, 1, 0]), 3) == []
    with pytest.raises(ValueError, match="k must be positive"):
        confident_errors(probs, target, 0)
    with pytest.raises(ValueError, match=r"probs must be \(N, C\)"):
        confident_errors(probs[:, 0], target, 1)


def test_calibrated_threshold_is_the_best_on_the_data_it_sees():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (400,), generator=g)
    # a classifier biased towards "positive": negatives sit around 0.6, positives around 0.8
    probs = (0.6 + 0.2 * target + 0.12 * torch.randn(400, generator=g)).clamp(0, 1)
    threshold, acc = calibrate_threshold(probs, target)
    # brute force: every split "p >= one of the probabilities" (or nothing positive) is a possible rule
    splits = [float(((probs >= t) == target.bool()).double().mean()) for t in probs.tolist()]
    assert acc == pytest.approx(max(splits + [float((target == 0).double().mean())])) and 0.6 < threshold < 0.8
    assert float(((probs >= threshold) == target.bool()).double().mean()) == pytest.approx(acc)
    assert acc > float(((probs >= 0.5) == target.bool()).double().mean())  # better than the default rule


def test_calibrated_threshold_prefers_one_half_on_ties_and_checks_its_input():
    assert calibrate_threshold(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == (0.5, 1.0)
    with pytest.raises(ValueError, match="labels must be 0"):
        calibrate_threshold(torch.tensor([0.1, 0.9]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="matching non-empty"):
        calibrate_threshold(torch.tensor([0.1, 0.9]), torch.tensor([0]))


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_scipys_exact_binomial_test(seed):
    from scipy.stats import binomtest

    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 400, (1,), generator=g))
    a = torch.rand(n, generator=g) < 0.8
    b = torch.rand(n, generator=g) < 0.7 + 0.02 * seed
    result = mcnemar(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (result["only_a"], result["only_b"]) == (only_a, only_b)
    assert result["p"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9)


def test_mcnemar_edge_cases_and_bad_input():
    same = torch.tensor([True, False, True])
    assert mcnemar(same, same) == {"only_a": 0, "only_b": 0, "p": 1.0}
    lopsided = mcnemar(torch.ones(20, dtype=torch.bool), torch.zeros(20, dtype=torch.bool))
    assert lopsided["only_a"] == 20 and lopsided["p"] == pytest.approx(2 / 2**20)
    with pytest.raises(ValueError, match="matching 1-D"):
        mcnemar(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_interval_matches_scipys_one_sample_t_interval(level):
    from scipy.stats import ttest_1samp

    values = [0.49, 1.76, 0.06, -0.3, 0.9]
    ours = mean_interval(values, level)
    ref = ttest_1samp(values, 0.0).confidence_interval(level)
    assert (ours["low"], ours["high"]) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert ours["mean"] == pytest.approx(sum(values) / 5) and ours["n"] == 5 and ours["level"] == level


def test_format_spread_matches_numpy_mean_and_sample_sd():
    import numpy as np

    values = [0.912, 0.875, 0.95]
    mean, sd = np.mean(values) * 100, np.std(values, ddof=1) * 100
    assert format_spread(values, "{:.2f}%", 100) == f"{mean:.2f}% ± {sd:.2f}%"
    assert format_spread([3.25]) == "3.2"  # one seed: no spread to show
    with pytest.raises(ValueError, match="no values"):
        format_spread([])


def test_mean_interval_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])
