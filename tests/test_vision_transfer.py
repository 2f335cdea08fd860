"""Transfer experiment: class parts, labelled subsets, rotation pretext, pre-training, paired fine-tuning runs."""

import math

import numpy as np
import pytest
import torch

from bigmodel_course.data import digits_splits
from bigmodel_course.vision_models import ViT, ViTConfig
from bigmodel_course.vision_transfer import (
    RotationDataset, TransferRecipe, TransferRun, class_part, finetune_run, labelled_subset, pretrain, replace_head,
    run_transfer, summarise, transfer_data,
)


@pytest.fixture(scope="module")
def data():
    return transfer_data(digits_splits())


def tiny_vit(num_classes: int) -> ViT:
    return ViT(ViTConfig(patch_size=4, d_model=16, n_heads=2, n_layers=1, dropout=0.0, num_classes=num_classes))


def test_parts_keep_their_classes_and_splits(data):
    splits = digits_splits()
    assert set(data.source_train.classes) == {0, 1, 2, 3, 4} and set(data.target_pool.classes) == {5, 6, 7, 8, 9}
    # labels are re-numbered 0..4 in class order; the original digit is recoverable from load_digits' targets
    from sklearn.datasets import load_digits
    target = load_digits().target
    for part in (data.source_train, data.source_val, data.target_pool, data.target_val, data.target_test):
        assert np.array_equal(np.asarray(part.classes)[part.y], target[part.index])
    assert set(data.target_pool.index) <= set(splits.idx_train) and set(data.target_test.index) <= set(splits.idx_test)
    assert len(data.target_test.y) == int(np.isin(splits.y_test, [5, 6, 7, 8, 9]).sum())
    with pytest.raises(ValueError, match="overlap"):
        transfer_data(splits, source=(0, 1, 5), target=(5, 6))
    with pytest.raises(ValueError, match="no image of the classes"):
        class_part(splits.x_val, splits.y_val, splits.idx_val, (11,))


@pytest.mark.parametrize("k", [1, 5, 50])
def test_labelled_subsets_are_balanced_seeded_and_never_test_images(data, k):
    rows = labelled_subset(data.target_pool.y, k, seed=0)
    assert np.bincount(data.target_pool.y[rows], minlength=5).tolist() == [k] * 5
    assert len(set(rows)) == 5 * k  # no image twice
    assert np.array_equal(rows, labelled_subset(data.target_pool.y, k, seed=0))  # the seed fixes the subset
    assert not np.array_equal(rows, labelled_subset(data.target_pool.y, k, seed=1))
    chosen = data.target_pool.index[rows]  # load_digits indices of the labelled images
    assert not set(chosen) & set(data.target_test.index) and not set(chosen) & set(data.target_val.index)
    assert set(np.asarray(data.target_pool.classes)[data.target_pool.y[rows]]) == {5, 6, 7, 8, 9}  # never 0–4


def test_labelled_subset_rejects_impossible_requests():
    labels = np.array([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="class 0 has 2 images, fewer than per_class=3"):
        labelled_subset(labels, 3, seed=0)
    with pytest.raises(ValueError, match="per_class must be a positive int"):
        labelled_subset(labels, 0, seed=0)


def test_rotation_items_are_quarter_turns_labelled_by_the_turn(data):
    images = data.unlabelled_train[:3]
    ds = RotationDataset(images, data.mean, data.std)
    assert len(ds) == 12
    for i in range(12):
        item = ds[i]
        image, turn = divmod(i, 4)
        expected = np.rot90((images[image] - data.mean) / data.std, turn)  # numpy's counter-clockwise turn
        np.testing.assert_allclose(item["pixel_values"][0].numpy(), expected, atol=1e-6)
        assert int(item["labels"]) == turn


def test_replace_head_gives_a_fresh_head_of_the_right_size():
    model = tiny_vit(5)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    replace_head(model, 3)
    assert model.head.out_features == 3 and torch.count_nonzero(model.head.bias) == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    with pytest.raises(ValueError, match="linear `head`"):
        replace_head(torch.nn.Sequential(), 3)


def test_pretraining_and_paired_runs_on_tiny_settings(data):
    recipe = TransferRecipe(pretrain_epochs=1, finetune_steps=4, finetune_lrs=(1e-3, 3e-3), eval_every=2,
                            patience=None, batch_size=16)
    pre, val = pretrain(tiny_vit, data, recipe, seed=0)
    assert pre.head.out_features == 5 and 0.0 <= val <= 1.0
    rot, _ = pretrain(tiny_vit, data, recipe, seed=0, pretext="rotation")
    assert rot.head.out_features == 4
    with pytest.raises(ValueError, match="unknown pretext"):
        pretrain(tiny_vit, data, recipe, pretext="jigsaw")
    before = {k: v.clone() for k, v in pre.state_dict().items()}
    seen = []
    runs = run_transfer(tiny_vit, pre, data, recipe, per_class=(2,), seeds=(0, 1), progress=seen.append)
    assert seen == runs and [(r.seed, r.init) for r in runs] == [(0, "scratch"), (0, "pretrained"),
                                                                  (1, "scratch"), (1, "pretrained")]
    assert all(r.lr in recipe.finetune_lrs and 0 < r.steps <= 4 for r in runs)
    assert all(torch.equal(pre.state_dict()[k], v) for k, v in before.items())  # fine-tuning works on copies
    # a run is reproducible from its seed
    again = finetune_run(tiny_vit, pre, data, labelled_subset(data.target_pool.y, 2, 1), recipe, 1, 2)
    assert again.test_accuracy == runs[3].test_accuracy and again.lr == runs[3].lr


def _run(k, seed, init, acc):
    return TransferRun(k, seed, init, 1e-3, acc, acc, 10, 0.1)


def test_summary_pairs_seeds():
    runs = [_run(10, 0, "scratch", 0.5), _run(10, 0, "pretrained", 0.7), _run(10, 1, "scratch", 0.6),
            _run(10, 1, "pretrained", 0.6), _run(5, 0, "scratch", 0.2), _run(5, 0, "pretrained", 0.3)]
    five, ten = summarise(runs)
    assert (ten.per_class, ten.n_seeds) == (10, 2)
    assert ten.scratch_mean == pytest.approx(0.55) and ten.pretrained_mean == pytest.approx(0.65)
    assert ten.diff_mean == pytest.approx(0.1) and ten.diff_sd == pytest.approx(math.sqrt(0.02))  # diffs 0.2, 0.0
    assert ten.diff_min == pytest.approx(0.0)
    assert five.n_seeds == 1 and math.isnan(five.diff_sd)
    with pytest.raises(ValueError, match=r"no run for \[\('pretrained', 2\)\]"):
        summarise(runs + [_run(10, 2, "scratch", 0.5)])


def test_linear_probe_is_logistic_regression_on_the_pooled_features(data):
    """With a "model" whose pooled output is the normalised pixels, the probe equals scikit-learn's logistic
    regression on the labelled pixels; with constant features it can do no better than one class."""
    from sklearn.linear_model import LogisticRegression

    from bigmodel_course.transformer import ModelOutput
    from bigmodel_course.vision_transfer import linear_probe

    class Pixels(torch.nn.Module):
        def __init__(self, constant: bool) -> None:
            super().__init__()
            self.constant = constant

        def forward(self, x):
            feats = torch.ones(len(x), 3) if self.constant else x.flatten(1)
            return ModelOutput(pooled=feats, logits=feats)

    rows = labelled_subset(data.target_pool.y, 3, seed=0)
    pixels = lambda part: ((part.x - data.mean) / data.std).reshape(len(part.x), -1)  # noqa: E731
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(pixels(data.target_pool)[rows], data.target_pool.y[rows])
    expected = (reference.predict(pixels(data.target_test)) == data.target_test.y).mean()
    assert linear_probe(Pixels(constant=False), data, rows) == pytest.approx(expected)
    assert expected > 0.5  # three images per class already separate most test digits
    majority = np.bincount(data.target_test.y).max() / len(data.target_test.y)
    assert linear_probe(Pixels(constant=True), data, rows) <= majority + 1e-9
