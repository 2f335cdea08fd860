"""Checkpoint files: clear errors for missing, corrupt or unfitting checkpoints, atomic writes, tied weights."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from bigmodel_course import checkpoints
from bigmodel_course.checkpoints import CheckpointError, read_checkpoint
from bigmodel_course.training import Trainer
from test_training import Tiny, cfg, cls_data, lm_data, tiny_gpt, weights


def test_write_checkpoint_records_its_format_version(tmp_path):
    """write_checkpoint stamps the format version read_checkpoint requires, whatever state the caller passes."""
    model = Tiny()
    checkpoints.write_checkpoint(tmp_path / "ckpt", model, torch.optim.AdamW(model.parameters()),
                                 {"rng": checkpoints.rng_state()})
    state, _, tensors = read_checkpoint(tmp_path / "ckpt")
    assert state["format_version"] == checkpoints.FORMAT_VERSION
    assert set(tensors) == set(model.state_dict())


@pytest.fixture
def saved(tmp_path):
    t = Trainer(Tiny(), cfg(max_steps=3), DataLoader(cls_data(), batch_size=4))
    t.train(steps=1)
    t.save_checkpoint(tmp_path / "ckpt")
    return t, tmp_path / "ckpt"


def fresh():
    return Trainer(Tiny(), cfg(max_steps=3), DataLoader(cls_data(), batch_size=4))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="missing") as err:
        fresh().load_checkpoint(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]), "truncated"),
    (lambda d: (d / "trainer_state.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "optimizer.safetensors").unlink(), "missing optimizer.safetensors"),
    (lambda d: (d / "trainer_state.json").write_text("[]"), "not a trainer state"),
    (lambda d: (d / "trainer_state.json").write_text(
        json.dumps({k: v for k, v in json.loads((d / "trainer_state.json").read_text()).items() if k != "rng"})),
     "malformed trainer state"),
])
def test_corrupt_checkpoint_is_a_clear_error(saved, damage, message):
    _, path = saved
    damage(path)
    t = fresh()
    before = weights(t.model)
    with pytest.raises(CheckpointError, match=message):
        t.load_checkpoint(path)
    assert all(torch.equal(t.model.state_dict()[k], v) for k, v in before.items())  # untouched
    assert t.step == 0


def test_corrupt_bytes_of_same_length(saved):
    _, path = saved
    raw = bytearray((path / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="has sha256 .*changed after it was recorded"):
        fresh().load_checkpoint(path)


def test_checkpoint_for_another_model(saved):
    _, path = saved
    other = Trainer(Tiny(d_in=7), cfg(max_steps=3), DataLoader(cls_data(), batch_size=4))
    with pytest.raises(CheckpointError, match=r"lin\.weight.*shape"):
        other.load_checkpoint(path)
    extra = Trainer(nn.Sequential(Tiny()), cfg(max_steps=3), DataLoader(cls_data(), batch_size=4))
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        extra.load_checkpoint(path)


def test_failed_save_keeps_previous_checkpoint(saved, monkeypatch):
    t, path = saved
    good = weights(t.model)
    t.train(steps=1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # temporary directory removed
    monkeypatch.undo()
    restored = fresh()
    restored.load_checkpoint(path)
    assert restored.step == 1
    assert all(torch.equal(restored.model.state_dict()[k], v) for k, v in good.items())
    t.save_checkpoint(path)  # a later save replaces it
    assert read_checkpoint(path)[0]["step"] == 2


def test_load_recovers_a_save_interrupted_between_renames(saved):
    _, path = saved
    path.rename(path.parent / ".ckpt.previous")  # crash after moving the old one aside
    t = fresh()
    t.load_checkpoint(path)
    assert t.step == 1


def test_tied_weights_saved_once(tmp_path):
    t = Trainer(tiny_gpt(), cfg(max_steps=2), DataLoader(lm_data(), batch_size=4))
    t.train()
    t.save_checkpoint(tmp_path / "gpt")
    _, _, model_tensors = read_checkpoint(tmp_path / "gpt")
    assert len(model_tensors) == len(t.model.state_dict()) - 1
    other = Trainer(tiny_gpt(5), cfg(max_steps=2), DataLoader(lm_data(), batch_size=4))
    other.load_checkpoint(tmp_path / "gpt")
    assert other.model.lm_head.weight is other.model.transformer.embeddings.word.weight
    assert torch.equal(other.model.lm_head.weight, t.model.lm_head.weight)
