"""The epoch a Trainer history records is the number of passes completed, not the 0-based pass in progress."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bigmodel_course.training import Trainer, TrainConfig
from bigmodel_course.transformer import ModelOutput


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, labels=None):
        logits = self.lin(x)
        return ModelOutput(logits=logits, loss=None if labels is None else F.cross_entropy(logits, labels))


class Pairs(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Endless(torch.utils.data.IterableDataset):
    """Two batches per pass, no length."""

    def __iter__(self):
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            yield {"x": torch.randn(3, 4, generator=g), "labels": torch.randint(0, 2, (3,), generator=g)}


def train(loader, **kw) -> Trainer:
    config = TrainConfig(lr=1e-2, device="cpu", progress=False, log_every=1, **kw)
    trainer = Trainer(Linear(), config, loader)
    trainer.train()
    return trainer


def test_last_record_says_all_epochs_ran():
    trainer = train(DataLoader(Pairs(16), batch_size=4, shuffle=True), epochs=3)  # 4 batches an epoch
    epochs = [r["epoch"] for r in trainer.history]
    assert epochs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0])
    assert trainer.history[-1]["epoch"] == 3.0
    # the resume position is untouched: still in the third pass (0-based 2), all 4 of its batches consumed
    state = trainer.state()
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 4)


def test_accumulation_counts_micro_batches():
    trainer = train(DataLoader(Pairs(12), batch_size=2), epochs=2, grad_accum_steps=3)  # 6 micro-batches, 2 steps
    assert [r["epoch"] for r in trainer.history] == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_loader_without_length_records_whole_passes():
    trainer = train(DataLoader(Endless(), batch_size=None), max_steps=5)
    # 2 batches a pass and no length: a pass counts once the next one has started (steps 3 and 5)
    assert [r["epoch"] for r in trainer.history] == [0.0, 0.0, 1.0, 1.0, 2.0]
