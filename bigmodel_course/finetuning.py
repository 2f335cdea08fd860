"""Fine-tuning for review sentiment, the label-efficiency experiment (pre-trained vs random initialisation), and
the cached sentiment classifier that later chapters (compression, deployment) start from."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

from .data import ClassificationDataset, review_splits
from .evaluation import accuracy
from .model_cache import load_or_train, publish, write_model_files
from .pretrained import Pretrained, load_pretrained, read_model_folder
from .tokenization import CharTokenizer
from .training import Trainer, TrainConfig
from .transformer import EncoderConfig, EncoderForSequenceClassification, GPTConfig, GPTForSequenceClassification
from .utils import cache_dir, get_profile, seed_everything


@dataclass(frozen=True)
class FinetuneSpec:
    """Sizes and hyper-parameters of one fine-tuning run."""

    max_len: int
    batch_size: int
    epochs: int  # passes over the labelled data, clamped to [min_steps, max_steps] optimizer steps
    min_steps: int
    max_steps: int
    lr: float
    eval_every: int  # optimizer steps between validation evaluations
    patience: int  # evaluations without improvement before stopping early


@dataclass(frozen=True)
class LabelEfficiencySpec:
    """The label-efficiency experiment in one profile: label counts, evaluation sizes, fine-tuning."""

    label_counts: tuple[int, ...]
    n_test: int | None  # None: the whole fixed test split
    n_val: int  # validation reviews for model selection (never the test split)
    finetune: FinetuneSpec


LABEL_EFFICIENCY_SPECS = {
    "ci": LabelEfficiencySpec((40, 80), 200, 100, FinetuneSpec(64, 16, 2, 5, 10, 5e-4, 5, 2)),
    "full": LabelEfficiencySpec((250, 500, 1000, 2000), None, 600,
                                FinetuneSpec(128, 32, 10, 150, 500, 3e-4, 25, 6)),
}

# Fine-tuning on the whole training split (Chapter 4's text-classification project).
PROJECT_SPECS = {
    "ci": FinetuneSpec(64, 16, 1, 5, 12, 5e-4, 6, 2),
    "full": FinetuneSpec(128, 32, 2, 100, 800, 2e-4, 80, 3),
}


def labelled_subset(texts: list[str], labels: list[int], n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """A stratified subset of n labelled examples (the same n and seed always give the same subset)."""
    if not 2 <= n <= len(texts):
        raise ValueError(f"subset size must be in [2, {len(texts)}], got {n}")
    if n == len(texts):
        return list(texts), list(labels)
    sub_x, _, sub_y, _ = train_test_split(texts, labels, train_size=n, stratify=labels, random_state=seed)
    return list(sub_x), list(sub_y)


def tfidf_baseline(train_texts, train_labels, test_texts, test_labels) -> float:
    """Test accuracy of TF-IDF on character 1-3-grams + logistic regression (the classical baseline)."""
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3))
    clf = LogisticRegression(max_iter=1000).fit(vec.fit_transform(train_texts), train_labels)
    return float((clf.predict(vec.transform(test_texts)) == test_labels).mean())


TFIDF_CS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # inverse regularisation strengths tried on validation


@dataclass(frozen=True)
class TfidfResult:
    """A tuned TF-IDF + logistic-regression baseline: the chosen C, validation accuracy per C, test accuracy."""

    c: float
    val_accuracy: dict[float, float]
    test_accuracy: float


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
    test_accuracy = float((models[best].predict(vec.transform(test[0])) == list(test[1])).mean())
    return TfidfResult(best, scores, test_accuracy)


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


def text_loader(data: tuple[list, list], tokenizer, max_len: int, batch_size: int = 128,
                shuffle: bool = False) -> DataLoader:
    """A DataLoader of (texts, labels) tokenized and padded per batch like ClassificationDataset."""
    ds = ClassificationDataset(*data, tokenizer, max_len)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate)


def finetune(model, tokenizer: CharTokenizer, train: tuple[list, list], test: tuple[list, list],
             spec: FinetuneSpec, seed: int = 0, progress: bool = False, val: tuple[list, list] | None = None) -> dict:
    """Fine-tune `model` on the labelled texts and return test accuracy, steps, seconds and history.

    With `val`, validation accuracy is measured every `spec.eval_every` steps; training stops after
    `spec.patience` evaluations without improvement and the best validation weights are restored.
    """
    seed_everything(seed)
    loader = text_loader(train, tokenizer, spec.max_len, spec.batch_size, shuffle=True)
    steps = min(spec.max_steps, max(spec.min_steps, spec.epochs * len(loader)))
    selection = {}
    if val is not None:
        selection = dict(eval_every=spec.eval_every, early_stopping_patience=spec.patience,
                         monitor="eval_accuracy", mode="max", restore_best=True)
    config = TrainConfig(lr=spec.lr, max_steps=steps, warmup_steps=steps // 10, seed=seed, progress=progress,
                         **selection)
    trainer = Trainer(model, config, loader,
                      eval_loader=None if val is None else text_loader(val, tokenizer, spec.max_len, 128),
                      metrics_fn=None if val is None else lambda logits, labels: {
                          "accuracy": accuracy(logits.argmax(-1), labels)})
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    logits, true = predict(trainer.model, text_loader(test, tokenizer, spec.max_len))
    return {"test_accuracy": accuracy(logits.argmax(-1), true), "steps": trainer.step, "best_step": trainer.best_step,
            "seconds": seconds, "history": history, "model": trainer.model, "test_logits": logits}


def label_efficiency(profile: str | None = None, kind: str = "bert", seed: int = 0,
                     progress: bool = False) -> list[dict]:
    """For each label count: test accuracy of the pre-trained and the randomly initialised `kind` ('bert' or 'gpt')
    classifier, and of TF-IDF + LR.

    Every model sees the same stratified subset of training reviews, selects its best step on the same
    validation reviews, and is scored on the same fixed test split.
    """
    profile = get_profile(profile).name
    le = LABEL_EFFICIENCY_SPECS[profile]
    spec = le.finetune
    pre = load_pretrained(kind, profile, progress=progress)
    splits = review_splits(seed=0)
    test = (splits.test_texts, splits.test_labels)
    if le.n_test is not None:
        test = labelled_subset(*test, le.n_test, seed)
    val = labelled_subset(splits.val_texts, splits.val_labels, le.n_val, seed)
    cfg = pre.model.cfg
    if spec.max_len > cfg.max_len:
        raise ValueError(f"fine-tuning length {spec.max_len} exceeds the pre-trained context {cfg.max_len}")
    rows = []
    for n in le.label_counts:
        train = labelled_subset(splits.train_texts, splits.train_labels, n, seed)
        row = {"labels": n, "tfidf_lr": tfidf_baseline(*train, *test)}
        for name, init in (("pretrained", pre), ("random", None)):
            seed_everything(seed)
            result = finetune(classifier_from(init, cfg), pre.tokenizer, train, test, spec, seed, progress, val=val)
            row[name] = result["test_accuracy"]
            row[f"{name}_seconds"] = round(result["seconds"], 1)
            row[f"{name}_steps"] = result["steps"]
            row[f"{name}_best_step"] = result["best_step"]
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
