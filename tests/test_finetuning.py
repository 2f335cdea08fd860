import pytest
import torch

from bigmodel_course.finetuning import (
    LABEL_EFFICIENCY_SPECS,
    classifier_from,
    label_efficiency,
    labelled_subset,
    load_sentiment_classifier,
    sentiment_dir,
    tfidf_baseline,
    tuned_tfidf,
)
from bigmodel_course.pretrained import Pretrained, load_pretrained
from bigmodel_course.transformer import GPT, GPTConfig, TransformerConfig


def test_labelled_subset_is_stratified_and_reproducible():
    texts = [f"t{i}" for i in range(100)]
    labels = [i % 4 == 0 for i in range(100)]
    x, y = labelled_subset(texts, labels, 20, seed=3)
    assert len(x) == 20 and sum(y) == 5 and labelled_subset(texts, labels, 20, seed=3) == (x, y)
    with pytest.raises(ValueError, match=r"subset size must be in \[2, 100\], got 101"):
        labelled_subset(texts, labels, 101)


def test_tfidf_baseline_learns_an_easy_task():
    train = ["好 好 好", "很好", "真好", "差 差", "很差", "真差"] * 3
    labels = [1, 1, 1, 0, 0, 0] * 3
    assert tfidf_baseline(train, labels, ["好", "差"], [1, 0]) == 1.0


def test_tuned_tfidf_chooses_c_on_validation_and_never_on_test():
    """C is the validation argmax (ties to the smaller C) and flipping every test label changes nothing but the
    test accuracy, which becomes its complement: the test split is scored once, after the choice."""
    import random

    rng = random.Random(0)
    good, bad = "好棒赞美妙优", "差烂糟坏劣"

    def texts(n):
        out = []
        for _ in range(n):
            label = rng.random() < 0.5
            chars = [rng.choice(good if (label != (rng.random() < 0.2)) else bad) for _ in range(4)]
            out.append(("".join(chars) + "的", int(label)))
        return [t for t, _ in out], [y for _, y in out]

    train, val, test = texts(200), texts(100), texts(100)
    result = tuned_tfidf(train, val, test, cs=(0.01, 1.0, 100.0))
    assert result.c == max(result.val_accuracy, key=lambda c: (result.val_accuracy[c], -c))
    assert set(result.val_accuracy) == {0.01, 1.0, 100.0} and result.test_accuracy > 0.8
    flipped = tuned_tfidf(train, val, (test[0], [1 - y for y in test[1]]), cs=(0.01, 1.0, 100.0))
    assert flipped.c == result.c and flipped.val_accuracy == result.val_accuracy
    assert flipped.test_accuracy == pytest.approx(1 - result.test_accuracy)
    with pytest.raises(ValueError, match="at least one C"):
        tuned_tfidf(train, val, test, cs=())


def test_classifier_starts_from_the_pretrained_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    pre = load_pretrained("bert", "ci", progress=False)
    model = classifier_from(pre, pre.model.cfg)
    for (name, a), b in zip(model.encoder.state_dict().items(), pre.model.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    random = classifier_from(None, pre.model.cfg)
    assert not torch.equal(random.encoder.stack.embeddings.word.weight, pre.model.encoder.stack.embeddings.word.weight)

    rows = label_efficiency("ci")
    assert [r["labels"] for r in rows] == list(LABEL_EFFICIENCY_SPECS["ci"].label_counts)
    for r in rows:
        assert 0.0 <= r["pretrained"] <= 1.0 and 0.0 <= r["random"] <= 1.0 and 0.0 <= r["tfidf_lr"] <= 1.0
        assert 1 <= r["pretrained_best_step"] <= r["pretrained_steps"]


def test_gpt_classifier_starts_from_the_pretrained_gpt(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=30, max_len=16, d_model=16, n_heads=2, n_layers=1)
    pre = Pretrained(GPT(cfg), None, [], {}, tmp_path)  # classifier_from only reads the weights
    model = classifier_from(pre, pre.model.cfg, num_labels=3)
    assert model.score.out_features == 3
    for (name, a), b in zip(model.transformer.state_dict().items(), pre.model.transformer.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="EncoderConfig or a GPTConfig"):
        classifier_from(None, TransformerConfig(vocab_size=10))


def test_sentiment_classifier_is_trained_once_cached_and_reloaded_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no fine-tuned gpt sentiment classifier"):
        load_sentiment_classifier("gpt", "ci", train_if_missing=False)
    first = load_sentiment_classifier("gpt", "ci")
    assert first.path == sentiment_dir("gpt", "ci")
    assert 1 <= first.meta["best_step"] <= first.meta["steps"]
    again = load_sentiment_classifier("gpt", "ci", train_if_missing=False)
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    ids = torch.tensor([again.tokenizer.encode("质量很好")])
    torch.testing.assert_close(first.model(ids).logits, again.model(ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown classifier 'lstm'"):
        sentiment_dir("lstm", "ci")
    (first.path / "config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match="unreadable.*delete it to retrain"):
        load_sentiment_classifier("gpt", "ci", train_if_missing=False)
