"""Fine-tuning for review sentiment, and the label-efficiency experiment: pre-trained vs random initialisation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

from .data import ClassificationDataset, review_splits
from .evaluation import accuracy
from .pretrained import Pretrained, load_pretrained
from .tokenization import CharTokenizer
from .training import Trainer, TrainConfig
from .transformer import EncoderConfig, EncoderForSequenceClassification
from .utils import get_profile, seed_everything


@dataclass(frozen=True)
class FinetuneSpec:
    """Sizes of the label-efficiency experiment in one profile."""

    label_counts: tuple[int, ...]
    max_len: int
    batch_size: int
    epochs: int  # passes over the labelled subset, clamped to [min_steps, max_steps] optimizer steps
    min_steps: int
    max_steps: int
    lr: float
    n_test: int | None  # None: the whole fixed test split


FINETUNE_SPECS = {
    "ci": FinetuneSpec((40, 80), 64, 16, 2, 5, 10, 5e-4, 200),
    "full": FinetuneSpec((250, 500, 1000, 2000), 128, 32, 10, 150, 500, 3e-4, None),
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


def classifier_from(pretrained: Pretrained | None, cfg: EncoderConfig) -> EncoderForSequenceClassification:
    """A sentiment classifier whose encoder starts from the pre-trained BERT, or from random weights."""
    model = EncoderForSequenceClassification(EncoderConfig.from_dict({**cfg.to_dict(), "num_labels": 2}))
    if pretrained is not None:
        model.encoder.load_state_dict(pretrained.model.encoder.state_dict())
    return model


def predict(model: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels over a loader of classification batches."""
    model.eval()
    preds, trues = [], []
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in loader:
            labels = batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            preds.append(logits.argmax(-1).cpu())
            trues.append(labels)
    return torch.cat(preds), torch.cat(trues)


def finetune(model, tokenizer: CharTokenizer, train: tuple[list, list], test: tuple[list, list],
             spec: FinetuneSpec, seed: int = 0, progress: bool = False) -> dict:
    """Fine-tune `model` on the labelled texts and return test accuracy, steps, seconds and history."""
    seed_everything(seed)
    train_ds = ClassificationDataset(*train, tokenizer, spec.max_len)
    test_ds = ClassificationDataset(*test, tokenizer, spec.max_len)
    loader = DataLoader(train_ds, batch_size=spec.batch_size, shuffle=True, collate_fn=train_ds.collate)
    test_loader = DataLoader(test_ds, batch_size=128, collate_fn=test_ds.collate)
    steps = min(spec.max_steps, max(spec.min_steps, spec.epochs * len(loader)))
    config = TrainConfig(lr=spec.lr, max_steps=steps, warmup_steps=steps // 10, seed=seed, progress=progress)
    trainer = Trainer(model, config, loader)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    pred, true = predict(trainer.model, test_loader)
    return {"test_accuracy": accuracy(pred, true), "steps": steps, "seconds": seconds, "history": history}


def label_efficiency(profile: str | None = None, seed: int = 0, progress: bool = False) -> list[dict]:
    """For each label count: test accuracy of the pre-trained and the randomly initialised encoder, and TF-IDF + LR.

    Every model sees the same stratified subset of training reviews and the same fixed test split.
    """
    profile = get_profile(profile).name
    spec = FINETUNE_SPECS[profile]
    pre = load_pretrained("bert", profile, progress=progress)
    splits = review_splits(seed=0)
    test = (splits.test_texts, splits.test_labels)
    if spec.n_test is not None:
        test = labelled_subset(*test, spec.n_test, seed)
    cfg = pre.model.cfg
    if spec.max_len > cfg.max_len:
        raise ValueError(f"fine-tuning length {spec.max_len} exceeds the pre-trained context {cfg.max_len}")
    rows = []
    for n in spec.label_counts:
        train = labelled_subset(splits.train_texts, splits.train_labels, n, seed)
        row = {"labels": n, "tfidf_lr": tfidf_baseline(*train, *test)}
        for name, init in (("pretrained", pre), ("random", None)):
            seed_everything(seed)
            result = finetune(classifier_from(init, cfg), pre.tokenizer, train, test, spec, seed, progress)
            row[name] = result["test_accuracy"]
            row[f"{name}_seconds"] = round(result["seconds"], 1)
            row["steps"] = result["steps"]
        rows.append(row)
    return rows
