"""Chapter 4's digit classifiers: the RBF-SVM baseline tuned on validation, one training recipe for any digits
model (`fit_digits`), and the supervised ResNet-18 for 8×8 images, trained once per profile and cached."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data.vision import DigitSplits, DigitsDataset, digits_augmentation, digits_splits
from .evaluation import accuracy, classification_metrics
from .model_cache import HISTORY_FILE, load_or_train, publish, read_json, read_meta, read_weights, write_model_files
from .training import Trainer, TrainConfig
from .utils import cache_dir, get_profile, seed_everything
from .vision_models import ResNetForImageClassification, ViTConfig

SVM_GAMMAS = (0.0005, 0.001, 0.002, 0.005)
SVM_CS = (1.0, 3.0, 10.0)


@dataclass
class SvmResult:
    """An RBF SVM whose (gamma, C) was chosen on the validation split, refitted on train + validation."""

    gamma: float
    c: float
    val_accuracy: dict[tuple[float, float], float]  # (gamma, C) -> accuracy on validation, fitted on train only
    model: object = field(repr=False)  # sklearn.svm.SVC fitted on train + validation with the chosen pair
    seconds: float = 0.0  # time of the final fit


def tuned_svm(splits: DigitSplits, gammas: tuple[float, ...] = SVM_GAMMAS,
              cs: tuple[float, ...] = SVM_CS) -> SvmResult:
    """Fit an RBF SVM on the raw training pixels for every (gamma, C), keep the pair with the best validation accuracy
    (ties go to the smaller gamma, then the smaller C: the smoother boundary), refit it on train + validation.

    The test split is not touched; score the returned model on it once."""
    from sklearn.svm import SVC

    if not gammas or not cs:
        raise ValueError("gammas and cs must each name at least one value")
    if any(not v > 0 for v in (*gammas, *cs)):
        raise ValueError(f"gammas and cs must be positive, got {gammas} and {cs}")
    x_train, x_val = splits.x_train.reshape(len(splits.x_train), -1), splits.x_val.reshape(len(splits.x_val), -1)
    scores = {(g, c): float((SVC(kernel="rbf", gamma=g, C=c).fit(x_train, splits.y_train).predict(x_val)
                             == splits.y_val).mean()) for g in gammas for c in cs}
    gamma, c = max(scores, key=lambda k: (scores[k], -k[0], -k[1]))
    start = time.perf_counter()
    model = SVC(kernel="rbf", gamma=gamma, C=c).fit(np.concatenate([x_train, x_val]),
                                                      np.concatenate([splits.y_train, splits.y_val]))
    return SvmResult(gamma, c, scores, model, time.perf_counter() - start)


@dataclass(frozen=True)
class FitRecipe:
    """How `fit_digits` trains a model: AdamW, 5 % warm-up + cosine, one validation pass per epoch, the weights of the
    best validation accuracy restored; `augment` applies `digits_augmentation` to the training images."""

    epochs: int
    lr: float
    weight_decay: float
    augment: bool
    patience: int | None = 10  # epochs without a better validation accuracy before stopping; None: run all
    batch_size: int = 64


# Chapter 4's ViTs: the plain patch-embedding ViT, and the one with a convolutional stem that the diagnosis leads to
VIT_PATCH = (ViTConfig(patch_size=2, d_model=64, n_heads=4, n_layers=4, dropout=0.2),
             FitRecipe(epochs=40, lr=2e-3, weight_decay=0.1, augment=False))
VIT_CONV_STEM = (ViTConfig(patch_size=2, d_model=64, n_heads=4, n_layers=4, dropout=0.0, stem_channels=(32, 32)),
                 FitRecipe(epochs=60, lr=2e-3, weight_decay=0.05, augment=True, patience=20))


@dataclass
class FitResult:
    """A model trained by `fit_digits` (eval mode) with its trainer, training seconds, and accuracies on the training
    images (no augmentation, eval mode: no dropout) and on validation (the best evaluation)."""

    model: nn.Module
    trainer: Trainer
    seconds: float
    train_accuracy: float
    val_accuracy: float

    @property
    def epochs_run(self) -> int:
        """Epochs trained (fewer than the recipe's when stopped early)."""
        return math.ceil(self.trainer.step / len(self.trainer.train_loader))

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights were restored (1-based)."""
        return math.ceil(self.trainer.best_step / len(self.trainer.train_loader))


@torch.no_grad()
def dataset_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Accuracy of `model` (put in eval mode) on a dataset of {"pixel_values", "labels"} items."""
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        preds.append(model(batch["pixel_values"].to(device)).logits.argmax(-1).cpu())
        labels.append(batch["labels"])
    return accuracy(torch.cat(preds), torch.cat(labels))


def train_digits_model(model: nn.Module, train: Dataset, val: Dataset, lr: float, weight_decay: float,
                       batch_size: int, seed: int = 0, epochs: int | None = None, max_steps: int | None = None,
                       eval_every: int | None = None, patience: int | None = None,
                       progress: bool = False) -> Trainer:
    """Train on a digits dataset with the chapter's Trainer settings: AdamW, 5 % warm-up + cosine, validation
    accuracy every `eval_every` steps (default: once per epoch), early stopping after `patience` evaluations
    without improvement, the best weights restored. Give `epochs` or `max_steps`; returns the trainer (model in
    eval mode)."""
    loader = DataLoader(train, batch_size=min(batch_size, len(train)), shuffle=True)
    steps = max_steps if max_steps is not None else epochs * len(loader)
    config = TrainConfig(lr=lr, weight_decay=weight_decay, epochs=epochs, max_steps=max_steps,
                         warmup_steps=max(1, steps // 20), eval_every=eval_every or len(loader),
                         monitor="eval_accuracy", mode="max", early_stopping_patience=patience, restore_best=True,
                         progress=progress, seed=seed)
    trainer = Trainer(model, config, loader, DataLoader(val, batch_size=512), metrics_fn=classification_metrics)
    trainer.train()
    model.eval()
    return trainer


def fit_digits(model: nn.Module, splits: DigitSplits, recipe: FitRecipe, seed: int = 0, n_train: int | None = None,
               progress: bool = False) -> FitResult:
    """Train `model` on the training part (its first `n_train` images when given) with `recipe`, selecting the
    weights on the validation part; the test part is not touched."""
    if n_train is not None and not 0 < n_train <= len(splits.y_train):
        raise ValueError(f"n_train must be in [1, {len(splits.y_train)}], got {n_train}")
    keep = slice(None) if n_train is None else slice(n_train)
    x, y = splits.x_train[keep], splits.y_train[keep]
    train = DigitsDataset(x, y, splits.mean, splits.std, transform=digits_augmentation() if recipe.augment else None)
    val = DigitsDataset(splits.x_val, splits.y_val, splits.mean, splits.std)
    start = time.perf_counter()
    trainer = train_digits_model(model, train, val, recipe.lr, recipe.weight_decay, recipe.batch_size, seed,
                                 epochs=recipe.epochs, patience=recipe.patience, progress=progress)
    seconds = time.perf_counter() - start
    train_accuracy = dataset_accuracy(model, DigitsDataset(x, y, splits.mean, splits.std))
    return FitResult(model.eval(), trainer, seconds, train_accuracy, float(trainer.best_metric))


@dataclass(frozen=True)
class DigitsRecipe:
    """Chapter 4's ResNet-18 recipe: AdamW, warm-up + cosine, augmentation, validation-selected weights."""

    n_train: int | None  # first n training images; None = the whole training part
    epochs: int
    patience: int | None  # evaluations without a better validation accuracy before stopping
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64

    def fit_recipe(self) -> FitRecipe:
        """The same settings as a `fit_digits` recipe (with augmentation)."""
        return FitRecipe(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, augment=True,
                         patience=self.patience, batch_size=self.batch_size)


TRAIN_THREADS = 1  # the classifier trains on one thread wherever it is trained (see train_resnet_digits)
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


def train_resnet_digits(splits: DigitSplits, recipe: DigitsRecipe, seed: int = 0,
                        progress: bool = False) -> FitResult:
    """ResNet-18 initialised with `seed` and trained with `recipe` through `fit_digits`, on TRAIN_THREADS threads:
    float sums depend on the thread count, so the same seed gives the same model in every notebook and process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        seed_everything(seed)
        model = ResNetForImageClassification(num_classes=10, in_channels=1)
        return fit_digits(model, splits, recipe.fit_recipe(), seed=seed, n_train=recipe.n_train, progress=progress)
    finally:
        torch.set_num_threads(threads)


def train_digits_classifier(profile: str | None = None, root: Path | None = None, progress: bool = False) -> Path:
    """Train ResNet-18 (seed 0) on the digits training part with Chapter 4's recipe, publish it atomically, return
    the folder."""
    name = get_profile(profile).name
    recipe = RECIPES[name]
    splits = digits_splits(test_size=0.2, val_size=0.15, seed=0)
    test = DigitsDataset(splits.x_test, splits.y_test, splits.mean, splits.std)
    result = train_resnet_digits(splits, recipe, seed=0, progress=progress)
    model, trainer = result.model.cpu().eval(), result.trainer
    n_train = len(splits.y_train) if recipe.n_train is None else recipe.n_train
    steps_per_epoch = math.ceil(n_train / min(recipe.batch_size, n_train))  # as fit_digits' loader
    meta = {"profile": name, "recipe": recipe.__dict__, "architecture": "resnet18_small",
            "test_accuracy": dataset_accuracy(model, test), "val_accuracy": result.val_accuracy,
            "steps": trainer.step, "epochs": math.ceil(trainer.step / steps_per_epoch),  # epochs run
            "steps_per_epoch": steps_per_epoch,
            "best_step": trainer.best_step, "stopped_early": trainer.should_stop,
            "train_seconds": round(result.seconds, 1), "threads": TRAIN_THREADS,
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
