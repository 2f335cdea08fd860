import pytest
import torch

from bigmodel_course.data import DigitsDataset, digits_splits
from bigmodel_course.digits_classifier import digits_dir, load_digits_classifier
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
