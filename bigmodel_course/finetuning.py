"""Fine-tuning for review sentiment, the label-efficiency experiment (pre-trained vs random initialisation), and
the cached sentiment classifier that later chapters (compression, deployment) start from."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from torch.utils.data import DataLoader

from .data import ClassificationDataset, LengthGroupedBatchSampler, review_splits
from .evaluation import accuracy, spread
from .model_cache import load_or_train, publish, write_model_files
from .pretrained import Pretrained, load_pretrained, read_model_folder
from .tokenization import CharTokenizer
from .training import Trainer, TrainConfig
from .transformer import EncoderConfig, EncoderForSequenceClassification, GPTConfig, GPTForSequenceClassification
from .utils import cache_dir, get_profile, seed_everything


@dataclass(frozen=True)
class FinetuneSpec:
    """Sizes and hyper-parameters of one fine-tuning run.

    With validation data a run stops when validation accuracy has not improved for `patience` evaluations (one
    every `eval_every` optimizer steps), or at the `max_steps` cap, and the best weights are restored: how long
    a run trains is decided by the data, not by a minimum step count. Without validation data it trains
    `max_steps` steps.
    """

    max_len: int
    batch_size: int
    lr: float
    max_steps: int
    eval_every: int
    patience: int
    warmup_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("max_len", "batch_size", "max_steps", "eval_every", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


INITS = ("pretrained", "random")


@dataclass(frozen=True)
class LabelEfficiencySpec:
    """The label-efficiency experiment of one profile: label counts, seeds, learning rates tried, evaluation."""

    label_counts: tuple[int | None, ...]  # None: every training review
    seeds: tuple[int, ...]  # each seed draws its own labelled subset, initialisation and batch order
    # learning rates tried per initialisation ('pretrained', 'random'), for each label count with the first seed;
    # the best on validation wins (fine-tuning a pre-trained body wants smaller steps than training from scratch)
    lrs: dict[str, tuple[float, ...]]
    n_test: int | None  # None: the whole fixed test split
    n_val: int  # validation reviews for every choice (step, learning rate, C); never the test split
    finetune: FinetuneSpec  # its lr is replaced by the chosen one

    def __post_init__(self) -> None:
        if set(self.lrs) != set(INITS) or not all(self.lrs[i] for i in INITS):
            raise ValueError(f"lrs must give at least one learning rate for each of {INITS}, got {self.lrs!r}")


LABEL_EFFICIENCY_SPECS = {
    "ci": LabelEfficiencySpec((40, 80), (0, 1), {"pretrained": (5e-4, 1e-3), "random": (5e-4, 1e-3)}, 200, 100,
                              FinetuneSpec(64, 16, 5e-4, 12, 4, 2, 2)),
    # every training review (None) is Chapter 4's project, run there with the same protocol
    "full": LabelEfficiencySpec((100, 250, 500, 1000, 2000), (0, 1, 2),
                                {"pretrained": (1e-4, 3e-4), "random": (3e-4, 1e-3)}, None, 600,
                                FinetuneSpec(128, 32, 3e-4, 3000, 25, 6, 10)),
}

# Fine-tuning on the whole training split (Chapter 4's text-classification project).
PROJECT_SPECS = {
    "ci": FinetuneSpec(64, 16, 5e-4, 12, 6, 2, 2),
    "full": FinetuneSpec(128, 32, 2e-4, 3000, 80, 4, 30),
}


def labelled_subset(texts: list[str], labels: list[int], n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """A stratified subset of n labelled examples (the same n and seed always give the same subset)."""
    if not 2 <= n <= len(texts):
        raise ValueError(f"subset size must be in [2, {len(texts)}], got {n}")
    if n == len(texts):
        return list(texts), list(labels)
    sub_x, _, sub_y, _ = train_test_split(texts, labels, train_size=n, stratify=labels, random_state=seed)
    return list(sub_x), list(sub_y)


TFIDF_CS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # inverse regularisation strengths tried on validation


@dataclass(frozen=True)
class TfidfResult:
    """A tuned TF-IDF + logistic-regression baseline: the chosen C, validation accuracy per C, test accuracy, and
    the fitted pipeline (vectoriser + the chosen classifier; `model.predict_proba(texts)` scores any texts)."""

    c: float
    val_accuracy: dict[float, float]
    test_accuracy: float
    model: Pipeline


def tuned_tfidf(train: tuple[list, list], val: tuple[list, list], test: tuple[list, list],
                cs: tuple[float, ...] = TFIDF_CS, min_df: int = 2) -> TfidfResult:
    """The strongest simple text baseline we know: TF-IDF on character 1-3-grams (sublinear tf, n-grams seen in at
    least `min_df` training texts) + logistic regression, its C chosen on `val`; the test split is scored once,
    with the chosen C (ties go to the smaller C, the stronger regularisation)."""
    if not cs:
        raise ValueError("cs must name at least one C")
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=min_df, sublinear_tf=True)
    x_train, x_val = vec.fit_transform(train[0]), vec.transform(val[0])
    models, scores = {}, {}
    for c in cs:
        models[c] = LogisticRegression(C=c, max_iter=2000).fit(x_train, train[1])
        scores[c] = float((models[c].predict(x_val) == list(val[1])).mean())
    best = max(cs, key=lambda c: (scores[c], -c))
    model = Pipeline([("tfidf", vec), ("lr", models[best])])
    test_accuracy = float((model.predict(test[0]) == list(test[1])).mean())
    return TfidfResult(best, scores, test_accuracy, model)


def classifier_from(pretrained: Pretrained | None, cfg: EncoderConfig | GPTConfig, num_labels: int = 2):
    """A classifier of the architecture `cfg` describes (BERT-style encoder or GPT), whose body starts from the
    pre-trained model's weights, or from random weights when `pretrained` is None; the head is always new."""
    cfg = type(cfg).from_dict({**cfg.to_dict(), "num_labels": num_labels})
    if isinstance(cfg, EncoderConfig):
        model = EncoderForSequenceClassification(cfg)
        if pretrained is not None:
            model.encoder.load_state_dict(pretrained.model.encoder.state_dict())
    elif isinstance(cfg, GPTConfig):
        model = GPTForSequenceClassification(cfg)
        if pretrained is not None:
            model.transformer.load_state_dict(pretrained.model.transformer.state_dict())
    else:
        raise ValueError(f"cfg must be an EncoderConfig or a GPTConfig, got {type(cfg).__name__}")
    return model


def predict(model: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and true labels (N,) over a loader of classification batches (model left in eval mode)."""
    model.eval()
    logits, trues = [], []
    # int8 dynamically quantized modules keep their weights packed (no parameters): they run on the CPU
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    with torch.no_grad():
        for batch in loader:
            labels = batch.pop("labels")
            logits.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
            trues.append(labels)
    return torch.cat(logits), torch.cat(trues)


def text_loader(data: tuple[list, list], tokenizer, max_len: int, batch_size: int = 128, shuffle: bool = False,
                by_length: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of (texts, labels) tokenized and padded per batch like ClassificationDataset.

    `by_length` groups texts of similar length into batches (LengthGroupedBatchSampler: random batches with
    `shuffle`, length order without): far less padding, but the order is no longer the data's, so use it where
    order does not matter (training, validation metrics), not for predictions read back against the texts."""
    ds = ClassificationDataset(*data, tokenizer, max_len)
    if by_length:
        sampler = LengthGroupedBatchSampler([len(ids) for ids in ds.ids], batch_size, shuffle=shuffle, seed=seed)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate)


def finetune(model, tokenizer: CharTokenizer, train: tuple[list, list], test: tuple[list, list] | None,
             spec: FinetuneSpec, seed: int = 0, progress: bool = False, val: tuple[list, list] | None = None) -> dict:
    """Fine-tune `model` on the labelled texts; returns steps, the best step, seconds, history, the model and,
    when `test` is given, its test accuracy and logits (in the order of the test texts).

    With `val`, validation accuracy is measured every `spec.eval_every` steps; training stops after
    `spec.patience` evaluations without improvement (or at `spec.max_steps`) and the best weights are restored.
    The test split plays no part in training or selection.
    """
    seed_everything(seed)
    loader = text_loader(train, tokenizer, spec.max_len, spec.batch_size, shuffle=True, by_length=True, seed=seed)
    selection, eval_loader, metrics_fn = {}, None, None
    if val is not None:
        selection = dict(eval_every=spec.eval_every, early_stopping_patience=spec.patience,
                         monitor="eval_accuracy", mode="max", restore_best=True)
        eval_loader = text_loader(val, tokenizer, spec.max_len, 128, by_length=True)
        metrics_fn = lambda logits, labels: {"accuracy": accuracy(logits.argmax(-1), labels)}  # noqa: E731
    config = TrainConfig(lr=spec.lr, max_steps=spec.max_steps, warmup_steps=spec.warmup_steps, seed=seed,
                         progress=progress, **selection)
    trainer = Trainer(model, config, loader, eval_loader=eval_loader, metrics_fn=metrics_fn)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    result = {"steps": trainer.step, "best_step": trainer.best_step, "val_accuracy": trainer.best_metric,
              "seconds": seconds, "history": history, "model": trainer.model}
    if test is not None:
        logits, true = predict(trainer.model, text_loader(test, tokenizer, spec.max_len))
        result.update(test_accuracy=accuracy(logits.argmax(-1), true), test_logits=logits)
    return result


def label_efficiency(profile: str | None = None, kind: str = "gpt", pretrained: Pretrained | None = None,
                     label_counts: tuple[int | None, ...] | None = None, inits: tuple[str, ...] = INITS,
                     tfidf: bool = True, progress: bool = False) -> list[dict]:
    """Every run of the label-efficiency experiment: one dict per (label count, initialisation, seed).

    For each label count (None: all training reviews) and seed, every model sees the same stratified subset of
    training reviews and the same validation reviews, and is scored once on the same fixed test split. The
    learning rate of each (label count, initialisation) is chosen from `spec.lrs[init]` on validation accuracy
    with the first seed; the other seeds reuse it. Initialisations: 'pretrained' (the cached pre-trained `kind`, or
    `pretrained` — for example an earlier checkpoint) and 'random'; with `tfidf`, TF-IDF + logistic regression
    with C chosen on the same validation reviews ('tfidf').

    Each dict: labels, init, seed, lr (or c), val_accuracy, test_accuracy, steps, best_step, seconds and, for
    the first seed's choice, val_by_lr. Summarise with `summarize_label_efficiency`.
    """
    profile = get_profile(profile).name
    le = LABEL_EFFICIENCY_SPECS[profile]
    unknown = set(inits) - set(INITS)
    if unknown:
        raise ValueError(f"unknown initialisations {sorted(unknown)}; expected some of {INITS}")
    pre = pretrained or load_pretrained(kind, profile, progress=progress)
    cfg = pre.model.cfg
    if le.finetune.max_len > cfg.max_len:
        raise ValueError(f"fine-tuning length {le.finetune.max_len} exceeds the pre-trained context {cfg.max_len}")
    splits = review_splits(seed=0)
    test = (splits.test_texts, splits.test_labels)
    if le.n_test is not None:
        test = labelled_subset(*test, le.n_test, 0)
    val = labelled_subset(splits.val_texts, splits.val_labels, le.n_val, 0)
    runs = []
    for n in le.label_counts if label_counts is None else label_counts:
        chosen: dict[str, float] = {}
        for seed in le.seeds:
            train = (splits.train_texts, splits.train_labels) if n is None else \
                labelled_subset(splits.train_texts, splits.train_labels, n, seed)
            base = {"labels": len(train[0]), "all": n is None, "seed": seed}
            if tfidf:
                t = tuned_tfidf(train, val, test)
                runs.append({**base, "init": "tfidf", "c": t.c, "val_accuracy": t.val_accuracy[t.c],
                             "test_accuracy": t.test_accuracy})
            for init in inits:
                start = pre if init == "pretrained" else None
                if init not in chosen:  # first seed: try every learning rate, keep the best on validation
                    lrs = le.lrs[init]
                    tried = {lr: _finetune_run(start, cfg, pre.tokenizer, train, val, le.finetune, lr, seed, progress)
                             for lr in lrs}
                    chosen[init] = max(lrs, key=lambda lr: (tried[lr]["val_accuracy"], -lr))
                    result = tried[chosen[init]]
                    extra = {"val_by_lr": {lr: r["val_accuracy"] for lr, r in tried.items()}}
                else:
                    result = _finetune_run(start, cfg, pre.tokenizer, train, val, le.finetune, chosen[init], seed,
                                           progress)
                    extra = {}
                logits, true = predict(result["model"], text_loader(test, pre.tokenizer, le.finetune.max_len))
                runs.append({**base, "init": init, "lr": chosen[init], "val_accuracy": result["val_accuracy"],
                             "test_accuracy": accuracy(logits.argmax(-1), true), "steps": result["steps"],
                             "best_step": result["best_step"], "seconds": round(result["seconds"], 1), **extra})
    return runs


def _finetune_run(pretrained, cfg, tokenizer, train, val, spec: FinetuneSpec, lr: float, seed: int,
                  progress: bool) -> dict:
    """One fine-tuning run from `pretrained` (None: random initialisation drawn with `seed`), no test scoring."""
    seed_everything(seed)
    model = classifier_from(pretrained, cfg)
    return finetune(model, tokenizer, train, None, replace(spec, lr=lr), seed, progress, val=val)


def summarize_label_efficiency(runs: list[dict]) -> list[dict]:
    """Per label count: mean, sample standard deviation, min and max test accuracy of every initialisation over
    seeds, and the paired difference pretrained − random (same seed: same subset) with its spread."""
    rows = []
    for n in dict.fromkeys(r["labels"] for r in runs):
        at = [r for r in runs if r["labels"] == n]
        row = {"labels": n, "all": at[0]["all"]}
        for init in dict.fromkeys(r["init"] for r in at):
            row[init] = spread([r["test_accuracy"] for r in at if r["init"] == init])
        by_seed = {(r["init"], r["seed"]): r["test_accuracy"] for r in at}
        seeds = sorted({s for i, s in by_seed if i == "pretrained"} & {s for i, s in by_seed if i == "random"})
        if seeds:
            row["difference"] = spread([by_seed["pretrained", s] - by_seed["random", s] for s in seeds])
        rows.append(row)
    return rows


SENTIMENT_KINDS = ("gpt", "bert")


@dataclass
class SentimentClassifier:
    """A fine-tuned review-sentiment classifier with its tokenizer and run facts (test accuracy, steps, spec)."""

    model: torch.nn.Module
    tokenizer: CharTokenizer
    meta: dict
    path: Path


def sentiment_dir(kind: str, profile: str, root: Path | None = None) -> Path:
    """Cache folder of the fine-tuned `kind` sentiment classifier of a profile."""
    if kind not in SENTIMENT_KINDS:
        raise ValueError(f"unknown classifier {kind!r}; expected one of {SENTIMENT_KINDS}")
    return (root or cache_dir("sentiment")) / f"{kind}-{get_profile(profile).name}"


def train_sentiment_classifier(kind: str = "gpt", profile: str | None = None, root: Path | None = None,
                               progress: bool = False) -> Path:
    """Fine-tune the pre-trained `kind` on the whole training split (Chapter 4's recipe: PROJECT_SPECS, validation
    selection) and publish model, config, tokenizer and meta atomically in the cache; returns the folder."""
    profile = get_profile(profile).name
    target = sentiment_dir(kind, profile, root)
    pre = load_pretrained(kind, profile, progress=progress)
    splits = review_splits(seed=0)
    spec = PROJECT_SPECS[profile]
    val = (splits.val_texts, splits.val_labels)
    if profile == "ci":
        val = labelled_subset(*val, 100)
    seed_everything(0)
    result = finetune(classifier_from(pre, pre.model.cfg), pre.tokenizer, (splits.train_texts, splits.train_labels),
                      (splits.test_texts, splits.test_labels), spec, seed=0, progress=progress, val=val)
    model = result["model"].cpu().eval()
    meta = {"kind": kind, "profile": profile, "spec": spec.__dict__, "test_accuracy": result["test_accuracy"],
            "steps": result["steps"], "best_step": result["best_step"], "train_seconds": round(result["seconds"], 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with publish(target) as tmp:
        write_model_files(tmp, model, meta, config=model.cfg.to_dict(), tokenizer=pre.tokenizer)
    return target


def load_sentiment_classifier(kind: str = "gpt", profile: str | None = None, root: Path | None = None,
                              train_if_missing: bool = True, progress: bool = False) -> SentimentClassifier:
    """Load the fine-tuned sentiment classifier of a profile from the cache, fine-tuning it first when missing."""
    cfg_cls, build = (EncoderConfig, EncoderForSequenceClassification) if kind == "bert" else \
        (GPTConfig, GPTForSequenceClassification)

    def read(folder: Path) -> SentimentClassifier:
        return SentimentClassifier(*read_model_folder(folder, cfg_cls, build), folder)

    return load_or_train(sentiment_dir(kind, profile, root),
                         lambda: train_sentiment_classifier(kind, profile, root, progress), read,
                         what=f"fine-tuned {kind} sentiment classifier", train_if_missing=train_if_missing)
