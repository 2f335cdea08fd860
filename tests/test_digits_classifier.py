import pytest
import torch

from bigmodel_course.data import DigitsDataset, digits_splits
from bigmodel_course.digits_classifier import (RECIPES, TRAIN_THREADS, digits_dir, load_digits_classifier,
                                               train_resnet_digits)
from bigmodel_course.evaluation import accuracy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return root, load_digits_classifier("ci", root=root)


def test_trains_once_and_reports_its_own_test_accuracy(trained):
    root, clf = trained
    assert clf.path == digits_dir("ci", root) and (clf.path / "model.safetensors").is_file()
    splits = digits_splits()
    assert clf.preprocessing == {"mean": splits.mean, "std": splits.std}
    test = DigitsDataset(splits.x_test, splits.y_test, splits.mean, splits.std)
    with torch.no_grad():
        pred = clf.model(test.images.sub(splits.mean).div(splits.std)).logits.argmax(-1)
    assert accuracy(pred, test.labels) == pytest.approx(clf.meta["test_accuracy"])
    assert clf.meta["test_accuracy"] > 0.3  # 300 images, one epoch: far above chance (0.1)
    assert not clf.model.training
    evals = [r for r in clf.history if "eval_accuracy" in r]  # one evaluation per epoch, the best one restored
    assert len(evals) == clf.meta["epochs"] and clf.meta["steps"] == clf.meta["epochs"] * clf.meta["steps_per_epoch"]
    assert max(r["eval_accuracy"] for r in evals) == pytest.approx(clf.meta["val_accuracy"])


def test_the_cached_classifier_is_seed_0_of_train_resnet_digits_on_fixed_threads(trained):
    _, clf = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if TRAIN_THREADS == 1 else 1)   # the caller's thread count must not matter...
    try:
        again = train_resnet_digits(digits_splits(), RECIPES["ci"], seed=0)
        assert torch.get_num_threads() == (2 if TRAIN_THREADS == 1 else 1)   # ...and is given back
    finally:
        torch.set_num_threads(threads)
    assert clf.meta["threads"] == TRAIN_THREADS
    for a, b in zip(clf.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_second_load_reads_the_cache(trained):
    root, clf = trained
    again = load_digits_classifier("ci", root=root, train_if_missing=False)
    assert again.meta["created"] == clf.meta["created"]
    for a, b in zip(clf.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_or_corrupt_cache_is_reported(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="no trained digit classifier"):
        load_digits_classifier("ci", root=tmp_path, train_if_missing=False)
    root, clf = trained
    meta = (clf.path / "meta.json").read_bytes()
    (clf.path / "meta.json").write_text("{broken")
    try:
        with pytest.raises(ValueError, match="unreadable .*meta.json has 7 bytes.*delete it to retrain"):
            load_digits_classifier("ci", root=root)
    finally:
        (clf.path / "meta.json").write_bytes(meta)


# ---------------------------------------------------------------- tuned SVM, fit_digits


def test_tuned_svm_chooses_on_validation_and_never_reads_the_test_split():
    import dataclasses

    import numpy as np
    from sklearn.svm import SVC

    from bigmodel_course.digits_classifier import tuned_svm

    splits = digits_splits()
    poisoned = dataclasses.replace(splits, x_test=np.full_like(splits.x_test, np.nan))  # SVC would fail on NaN
    result = tuned_svm(poisoned, gammas=(0.0005, 0.001, 0.05), cs=(1.0, 10.0))
    x_tr, x_va = splits.x_train.reshape(-1, 64), splits.x_val.reshape(-1, 64)
    for (g, c), score in result.val_accuracy.items():
        assert score == pytest.approx((SVC(gamma=g, C=c).fit(x_tr, splits.y_train).predict(x_va) == splits.y_val)
                                      .mean())
    best = max(result.val_accuracy.values())
    assert result.val_accuracy[result.gamma, result.c] == best
    assert result.val_accuracy[0.05, 1.0] < best  # a far too narrow kernel loses on validation
    ties = [k for k, v in result.val_accuracy.items() if v == best]
    assert (result.gamma, result.c) == min(ties)  # ties: smaller gamma, then smaller C
    assert result.model.shape_fit_ == (len(x_tr) + len(x_va), 64)  # refitted on train + validation
    with pytest.raises(ValueError, match="must be positive"):
        tuned_svm(splits, gammas=(0.0,))


def test_fit_digits_reports_train_and_validation_accuracy():
    from bigmodel_course.digits_classifier import FitRecipe, dataset_accuracy, fit_digits
    from bigmodel_course.utils import seed_everything
    from bigmodel_course.vision_models import ViT, ViTConfig

    splits = digits_splits()
    seed_everything(0)
    model = ViT(ViTConfig(patch_size=4, d_model=16, n_heads=2, n_layers=1, dropout=0.5, stem_channels=(4,)))
    result = fit_digits(model, splits, FitRecipe(epochs=2, lr=3e-3, weight_decay=0.0, augment=True, patience=None),
                        n_train=100)
    assert not result.model.training and result.epochs_run == 2 and 1 <= result.best_epoch <= 2
    plain = DigitsDataset(splits.x_train[:100], splits.y_train[:100], splits.mean, splits.std)
    assert result.train_accuracy == pytest.approx(dataset_accuracy(model, plain))  # eval mode: no dropout, no noise
    val = DigitsDataset(splits.x_val, splits.y_val, splits.mean, splits.std)
    assert result.val_accuracy == pytest.approx(dataset_accuracy(model, val))  # the restored (best) weights
    assert [r.get("epoch") for r in result.trainer.history if "train_loss" in r] == [2.0]  # logged at the end
    with pytest.raises(ValueError, match="n_train must be in"):
        fit_digits(model, splits, FitRecipe(epochs=1, lr=1e-3, weight_decay=0.0, augment=False), n_train=0)
