"""Transfer learning without downloads: pre-train a digits model on digits 0–4, fine-tune it on a few labelled
images of digits 5–9, and compare with the same model trained from scratch on the same images.

Protocol: pre-training sees the training part's 0–4 images (its validation part's 0–4 images choose the weights);
fine-tuning sees `per_class` labelled training images of each of 5–9, drawn by the seed; the validation part's 5–9
images choose the learning rate and the stopping step; the test part's 5–9 images are scored once per run, for the
chosen learning rate only. A seed fixes the labelled subset and the initialisation of whatever is new (the whole
model from scratch, or the new head on the pre-trained body), and both initialisations see the same subset, so
their test accuracies can be compared seed by seed (paired differences).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .data.vision import DigitSplits, DigitsDataset, digits_augmentation, normalise_digits
from .digits_classifier import dataset_accuracy, train_digits_model
from .evaluation import spread
from .utils import seed_everything

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
INITS = ("scratch", "pretrained")


@dataclass(frozen=True)
class ClassPart:
    """Images (N, 8, 8) on the raw 0–16 scale whose digits lie in `classes`, labels re-numbered 0..len(classes)-1
    in the order of `classes`, and the images' indices into load_digits."""

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray
    classes: tuple[int, ...]

    def dataset(self, mean: float, std: float, augment: bool = False, rows: np.ndarray | None = None) -> DigitsDataset:
        """The images (only `rows` when given) as a DigitsDataset, with the training augmentation when `augment`."""
        keep = slice(None) if rows is None else rows
        return DigitsDataset(self.x[keep], self.y[keep], mean, std,
                             transform=digits_augmentation() if augment else None)


def class_part(x: np.ndarray, digits: np.ndarray, index: np.ndarray, classes: tuple[int, ...]) -> ClassPart:
    """The images of `x` whose digit is in `classes`, labels re-numbered by position in `classes`."""
    classes = tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct and non-empty, got {classes}")
    mask = np.isin(digits, classes)
    if not mask.any():
        raise ValueError(f"no image of the classes {classes}")
    relabel = {c: i for i, c in enumerate(classes)}
    y = np.array([relabel[int(d)] for d in digits[mask]], dtype=np.int64)
    return ClassPart(x[mask], y, index[mask], classes)


@dataclass(frozen=True)
class TransferData:
    """The parts of one DigitSplits the experiment uses, and the training part's pixel statistics."""

    source_train: ClassPart  # pre-training images and labels (digits 0–4 of the training part)
    source_val: ClassPart  # chooses the pre-trained weights (digits 0–4 of the validation part)
    target_pool: ClassPart  # the labelled subsets are drawn from here (digits 5–9 of the training part)
    target_val: ClassPart  # chooses learning rate and stopping step (digits 5–9 of the validation part)
    target_test: ClassPart  # scored once per run (digits 5–9 of the test part)
    mean: float
    std: float
    unlabelled_train: np.ndarray  # every training-part image, labels dropped (self-supervised pre-training)
    unlabelled_val: np.ndarray  # every validation-part image, labels dropped (chooses self-supervised weights)


def transfer_data(splits: DigitSplits, source: tuple[int, ...] = SOURCE_CLASSES,
                  target: tuple[int, ...] = TARGET_CLASSES) -> TransferData:
    """Split each part of `splits` into source-class and target-class images (the two sets of classes must not meet)."""
    if set(source) & set(target):
        raise ValueError(f"source classes {source} and target classes {target} overlap")
    return TransferData(
        class_part(splits.x_train, splits.y_train, splits.idx_train, source),
        class_part(splits.x_val, splits.y_val, splits.idx_val, source),
        class_part(splits.x_train, splits.y_train, splits.idx_train, target),
        class_part(splits.x_val, splits.y_val, splits.idx_val, target),
        class_part(splits.x_test, splits.y_test, splits.idx_test, target),
        splits.mean, splits.std, splits.x_train, splits.x_val,
    )


class RotationDataset(Dataset):
    """Self-supervised rotation prediction (Gidaris et al. 2018): item 4i + r is image i turned by r × 90°
    (after the optional augmentation), labelled r; the images' own labels are never read."""

    def __init__(self, images: np.ndarray, mean: float, std: float, augment: bool = False) -> None:
        self.base = DigitsDataset(images, np.zeros(len(images), dtype=np.int64), mean, std,
                                  transform=digits_augmentation() if augment else None)

    def __len__(self) -> int:
        return 4 * len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, turn = divmod(i, 4)
        x = self.base[image]["pixel_values"]
        return {"pixel_values": torch.rot90(x, turn, dims=(1, 2)), "labels": torch.tensor(turn)}


def labelled_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted row indices of `per_class` images of every label in `labels`, drawn without replacement by `seed`."""
    if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class <= 0:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than per_class={per_class}")
        rows.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(rows))


@dataclass(frozen=True)
class TransferRecipe:
    """Pre-training (epochs over the source images) and fine-tuning (optimizer steps, learning rates to choose from
    on validation, evaluation interval and patience in evaluations), both with AdamW and, when `augment`, with
    `digits_augmentation` on the training images."""

    pretrain_epochs: int = 60
    pretrain_lr: float = 2e-3
    weight_decay: float = 0.05
    finetune_steps: int = 200
    finetune_lrs: tuple[float, ...] = (3e-4, 1e-3)
    eval_every: int = 10
    patience: int | None = 6
    batch_size: int = 32
    augment: bool = True


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a model with a linear `head` a new, N(0, 0.02)-initialised head with `num_classes` outputs (in place)."""
    old = getattr(model, "head", None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"the model needs a linear `head`, got {type(old).__name__}")
    head = nn.Linear(old.in_features, num_classes)
    nn.init.normal_(head.weight, 0.0, 0.02)
    nn.init.zeros_(head.bias)
    model.head = head.to(old.weight.device)
    return model


PRETEXTS = ("supervised", "rotation")


def pretrain(make_model: Callable[[int], nn.Module], data: TransferData, recipe: TransferRecipe, seed: int = 0,
             pretext: str = "supervised") -> tuple[nn.Module, float]:
    """Pre-train a model: "supervised" classifies the source-class images (labels of digits 0–4 only);
    "rotation" predicts the quarter turn of every training image (no labels at all). Returns the model and
    its validation accuracy on the pretext task."""
    if pretext not in PRETEXTS:
        raise ValueError(f"unknown pretext {pretext!r}; expected one of {PRETEXTS}")
    seed_everything(seed)
    if pretext == "supervised":
        model = make_model(len(data.source_train.classes))
        train = data.source_train.dataset(data.mean, data.std, augment=recipe.augment)
        val = data.source_val.dataset(data.mean, data.std)
    else:
        model = make_model(4)
        train = RotationDataset(data.unlabelled_train, data.mean, data.std, augment=recipe.augment)
        val = RotationDataset(data.unlabelled_val, data.mean, data.std)
    trainer = train_digits_model(model, train, val, recipe.pretrain_lr, recipe.weight_decay, recipe.batch_size,
                                 seed, epochs=recipe.pretrain_epochs)
    return model, float(trainer.best_metric)


@dataclass(frozen=True)
class TransferRun:
    """One fine-tuning run: labels per class, seed, initialisation, the learning rate chosen on validation, its
    validation accuracy, its test accuracy (scored once) and the training steps it took."""

    per_class: int
    seed: int
    init: str
    lr: float
    val_accuracy: float
    test_accuracy: float
    steps: int
    seconds: float

    def to_dict(self) -> dict:
        """Plain dict (for tables and JSON)."""
        return asdict(self)


def finetune_run(make_model: Callable[[int], nn.Module], pretrained: nn.Module | None, data: TransferData,
                 rows: np.ndarray, recipe: TransferRecipe, seed: int, per_class: int) -> TransferRun:
    """Fine-tune a copy of `pretrained` with a new head (or, when None, a fresh `make_model`) on the target pool's
    `rows` with each of the recipe's learning rates; the best on validation is scored once on the test images."""
    n_classes = len(data.target_pool.classes)
    if not set(data.target_pool.y[rows]) <= set(range(n_classes)):
        raise ValueError("the labelled rows hold labels outside the target classes")
    train = data.target_pool.dataset(data.mean, data.std, augment=recipe.augment, rows=rows)
    val = data.target_val.dataset(data.mean, data.std)
    best: tuple[float, float, nn.Module, int] | None = None
    start = time.perf_counter()
    for lr in recipe.finetune_lrs:
        seed_everything(seed)  # the same initialisation of what is new for every learning rate
        model = make_model(n_classes) if pretrained is None else replace_head(copy.deepcopy(pretrained), n_classes)
        trainer = train_digits_model(model, train, val, lr, recipe.weight_decay, recipe.batch_size, seed,
                                     max_steps=recipe.finetune_steps, eval_every=recipe.eval_every,
                                     patience=recipe.patience)
        score = float(trainer.best_metric)
        if best is None or score > best[0]:  # ties keep the smaller (earlier) learning rate
            best = (score, lr, model, trainer.step)
    score, lr, model, steps = best
    test = dataset_accuracy(model, data.target_test.dataset(data.mean, data.std))
    return TransferRun(per_class, seed, "scratch" if pretrained is None else "pretrained", lr, score, test, steps,
                       round(time.perf_counter() - start, 1))


def run_transfer(make_model: Callable[[int], nn.Module], pretrained: nn.Module, data: TransferData,
                 recipe: TransferRecipe, per_class: tuple[int, ...] = (5, 10, 50), seeds: tuple[int, ...] = (0, 1, 2),
                 progress: Callable[[TransferRun], None] | None = None) -> list[TransferRun]:
    """Every (labels per class, seed) fine-tuned from scratch and from `pretrained`, on the same labelled subset."""
    runs = []
    for k in per_class:
        for seed in seeds:
            rows = labelled_subset(data.target_pool.y, k, seed)
            for init in INITS:
                run = finetune_run(make_model, pretrained if init == "pretrained" else None, data, rows, recipe,
                                   seed, k)
                runs.append(run)
                if progress is not None:
                    progress(run)
    return runs


@dataclass(frozen=True)
class TransferSummary:
    """Mean and sample standard deviation over seeds of scratch and pre-trained test accuracy at one number of
    labels per class, and of their paired difference (pre-trained minus scratch, same seed)."""

    per_class: int
    n_seeds: int
    scratch_mean: float
    scratch_sd: float
    pretrained_mean: float
    pretrained_sd: float
    diff_mean: float
    diff_sd: float
    diff_min: float


def summarise(runs: list[TransferRun]) -> list[TransferSummary]:
    """One TransferSummary per number of labels per class; every seed must have both initialisations."""
    out = []
    for k in sorted({r.per_class for r in runs}):
        by = {(r.init, r.seed): r.test_accuracy for r in runs if r.per_class == k}
        seeds = sorted({s for _, s in by})
        missing = [(i, s) for s in seeds for i in INITS if (i, s) not in by]
        if missing:
            raise ValueError(f"{k} labels per class: no run for {missing} (every seed needs both initialisations)")
        scratch = [by["scratch", s] for s in seeds]
        pre = [by["pretrained", s] for s in seeds]
        diff = [p - q for p, q in zip(pre, scratch)]
        s, p, d = spread(scratch), spread(pre), spread(diff)
        out.append(TransferSummary(k, len(seeds), s["mean"], s["sd"], p["mean"], p["sd"], d["mean"], d["sd"], d["min"]))
    return out


@torch.no_grad()
def pooled_features(model: nn.Module, part: ClassPart, mean: float, std: float) -> np.ndarray:
    """The model's pooled representation (ModelOutput.pooled, eval mode) of every image of a part, (N, d)."""
    model.eval()
    out = model(normalise_digits(part.dataset(mean, std).images, mean, std))
    if getattr(out, "pooled", None) is None:
        raise ValueError(f"{type(model).__name__} returns no pooled representation")
    return out.pooled.numpy()


def linear_probe(model: nn.Module, data: TransferData, rows: np.ndarray, c: float = 1.0) -> float:
    """Test accuracy of a logistic regression (regularisation C=c) fitted on the frozen model's pooled features of
    the target pool's labelled `rows`: how much the features alone separate the target classes."""
    from sklearn.linear_model import LogisticRegression

    train = pooled_features(model, data.target_pool, data.mean, data.std)[rows]
    clf = LogisticRegression(C=c, max_iter=5000).fit(train, data.target_pool.y[rows])
    test = pooled_features(model, data.target_test, data.mean, data.std)
    return float((clf.predict(test) == data.target_test.y).mean())
