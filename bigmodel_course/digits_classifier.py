"""Chapter 4's supervised digit classifier (ResNet-18 for 8×8 images), trained once per profile and cached."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from .data.vision import DigitsDataset, digits_augmentation, digits_splits
from .evaluation import accuracy, classification_metrics
from .model_cache import HISTORY_FILE, load_or_train, publish, read_json, read_meta, read_weights, write_model_files
from .training import Trainer, TrainConfig
from .utils import cache_dir, get_profile, seed_everything
from .vision import ResNetForImageClassification


@dataclass(frozen=True)
class DigitsRecipe:
    """Chapter 4's ResNet-18 recipe: AdamW, warm-up + cosine, augmentation, validation-selected weights."""

    n_train: int | None  # first n training images; None = the whole training part
    epochs: int
    patience: int | None  # evaluations without a better validation accuracy before stopping
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64


RECIPES = {"ci": DigitsRecipe(n_train=300, epochs=1, patience=None),
           "full": DigitsRecipe(n_train=None, epochs=15, patience=10)}


@dataclass
class DigitsClassifier:
    """The trained classifier (eval mode, CPU), its input normalisation, run facts (test accuracy, steps, epochs,
    seconds) and training history (the Trainer's records, evaluations included)."""

    model: ResNetForImageClassification
    meta: dict
    history: list[dict]
    path: Path

    @property
    def preprocessing(self) -> dict:
        """Pixel statistics of the training part: {"mean": ..., "std": ...} (raw 0–16 scale)."""
        return self.meta["preprocessing"]


def digits_dir(profile: str | None = None, root: Path | None = None) -> Path:
    """Cache folder of the digit classifier of a profile."""
    return (root or cache_dir("digits")) / f"resnet18-{get_profile(profile).name}"


@torch.no_grad()
def _test_accuracy(model: torch.nn.Module, dataset: DigitsDataset) -> float:
    model.eval()
    loader = DataLoader(dataset, batch_size=512)
    pred = torch.cat([model(b["pixel_values"]).logits.argmax(-1) for b in loader])
    return accuracy(pred, dataset.labels)


def train_digits_classifier(profile: str | None = None, root: Path | None = None, progress: bool = False) -> Path:
    """Train ResNet-18 on the digits training part with Chapter 4's recipe, publish it atomically, return the folder."""
    name = get_profile(profile).name
    recipe = RECIPES[name]
    splits = digits_splits(test_size=0.2, val_size=0.15, seed=0)
    train = DigitsDataset(splits.x_train, splits.y_train, splits.mean, splits.std, transform=digits_augmentation())
    if recipe.n_train is not None:
        train = Subset(train, range(recipe.n_train))
    val = DigitsDataset(splits.x_val, splits.y_val, splits.mean, splits.std)
    test = DigitsDataset(splits.x_test, splits.y_test, splits.mean, splits.std)
    seed_everything(0)
    model = ResNetForImageClassification(num_classes=10, in_channels=1)
    train_loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
    steps = recipe.epochs * len(train_loader)
    config = TrainConfig(lr=recipe.lr, weight_decay=recipe.weight_decay, epochs=recipe.epochs,
                         warmup_steps=max(1, steps // 20), eval_every=len(train_loader), monitor="eval_accuracy",
                         mode="max", early_stopping_patience=recipe.patience, restore_best=True,
                         progress=progress, seed=0)
    trainer = Trainer(model, config, train_loader, DataLoader(val, batch_size=512), metrics_fn=classification_metrics)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model = model.cpu().eval()
    meta = {"profile": name, "recipe": recipe.__dict__, "architecture": "resnet18_small",
            "test_accuracy": _test_accuracy(model, test), "val_accuracy": float(trainer.best_metric),
            "steps": trainer.step, "epochs": math.ceil(trainer.step / len(train_loader)),  # epochs run
            "steps_per_epoch": len(train_loader),
            "best_step": trainer.best_step, "stopped_early": trainer.should_stop, "train_seconds": round(seconds, 1),
            "preprocessing": {"mean": splits.mean, "std": splits.std}, "config": model.config,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    target = digits_dir(name, root)
    with publish(target) as tmp:
        write_model_files(tmp, model, meta, history=trainer.history)
    return target


def load_digits_classifier(profile: str | None = None, root: Path | None = None, train_if_missing: bool = True,
                           progress: bool = False) -> DigitsClassifier:
    """Load the cached digit classifier of a profile, training it first when missing."""
    def read(folder: Path) -> DigitsClassifier:
        meta = read_meta(folder)
        model = read_weights(ResNetForImageClassification(**meta["config"]), folder)
        return DigitsClassifier(model, meta, read_json(folder, HISTORY_FILE), folder)

    return load_or_train(digits_dir(profile, root), lambda: train_digits_classifier(profile, root, progress), read,
                         what="trained digit classifier", train_if_missing=train_if_missing,
                         stale=lambda folder: not (folder / HISTORY_FILE).is_file())  # written before histories
