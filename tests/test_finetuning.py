import math

import pytest
import torch

from bigmodel_course.finetuning import (
    LABEL_EFFICIENCY_SPECS,
    FinetuneSpec,
    LabelEfficiencySpec,
    classifier_from,
    finetune,
    label_efficiency,
    labelled_subset,
    load_sentiment_classifier,
    sentiment_dir,
    summarize_label_efficiency,
    tuned_tfidf,
)
import bigmodel_course.finetuning as finetuning
from bigmodel_course.evaluation import spread
from bigmodel_course.data import LengthGroupedBatchSampler, ReviewSplits
from bigmodel_course.pretrained import Pretrained, load_pretrained
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig, TransformerConfig


def test_labelled_subset_is_stratified_and_reproducible():
    texts = [f"t{i}" for i in range(100)]
    labels = [i % 4 == 0 for i in range(100)]
    x, y = labelled_subset(texts, labels, 20, seed=3)
    assert len(x) == 20 and sum(y) == 5 and labelled_subset(texts, labels, 20, seed=3) == (x, y)
    with pytest.raises(ValueError, match=r"subset size must be in \[2, 100\], got 101"):
        labelled_subset(texts, labels, 101)


def test_tuned_tfidf_learns_an_easy_task():
    train = ["好 好 好", "很好", "真好", "差 差", "很差", "真差"] * 3
    labels = [1, 1, 1, 0, 0, 0] * 3
    result = tuned_tfidf((train, labels), (["很好", "很差"], [1, 0]), (["好", "差"], [1, 0]))
    assert result.test_accuracy == 1.0
    proba = result.model.predict_proba(["真好", "太差"])  # the fitted pipeline scores unseen texts
    assert proba.shape == (2, 2) and proba[0, 1] > 0.5 > proba[1, 1]


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


def _tiny_task(seed: int = 0, n: int = 60) -> tuple[list[str], list[int]]:
    """Short texts whose label is which of two character sets most of their characters come from."""
    import random

    rng = random.Random(seed)
    good, bad = "好棒赞美妙优", "差烂糟坏劣"
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.random() < 0.5)
        texts.append("".join(rng.choice(good if label != (rng.random() < 0.2) else bad)
                             for _ in range(rng.randint(2, 9))))
        labels.append(label)
    return texts, labels


@pytest.fixture
def tiny_experiment(monkeypatch):
    """label_efficiency on synthetic reviews and a tiny random 'pre-trained' GPT: fast, and every choice visible."""
    train, val, test = _tiny_task(0, 80), _tiny_task(1, 30), _tiny_task(2, 30)
    splits = ReviewSplits(*train, *val, *test)
    monkeypatch.setattr(finetuning, "review_splits", lambda seed=0: splits)
    spec = LabelEfficiencySpec((10, None), (0, 1, 2), {"pretrained": (1e-3, 2e-3), "random": (1e-3, 3e-3)}, None, 30,
                               FinetuneSpec(16, 8, 1e-3, 40, 4, 2, 2))
    monkeypatch.setitem(LABEL_EFFICIENCY_SPECS, "ci", spec)
    tok = CharTokenizer.train(train[0] + val[0], min_freq=1)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, max_len=16, d_model=16, n_heads=2, n_layers=1, pad_token_id=tok.pad_id)
    return splits, spec, Pretrained(GPT(cfg), tok, [], {}, None)


def test_label_efficiency_is_paired_per_seed_and_chooses_only_on_validation(tiny_experiment, monkeypatch):
    splits, spec, pre = tiny_experiment
    runs = label_efficiency("ci", pretrained=pre)
    assert {(r["labels"], r["init"], r["seed"]) for r in runs} == {
        (n, i, s) for n in (10, 80) for i in ("tfidf", "pretrained", "random") for s in (0, 1, 2)}
    assert all(r["all"] == (r["labels"] == 80) for r in runs)
    for r in runs:
        if r["init"] == "tfidf":
            continue
        # the budget is the data's: a run ends at the cap or `patience` evaluations after its best step
        assert r["steps"] == spec.finetune.max_steps or r["steps"] == r["best_step"] + 2 * 4
        if "val_by_lr" in r:  # the first seed tried every rate and kept the validation argmax
            assert r["seed"] == 0 and set(r["val_by_lr"]) == set(spec.lrs[r["init"]])
            assert r["val_accuracy"] == max(r["val_by_lr"].values())
        else:
            first = next(q for q in runs if q["labels"] == r["labels"] and q["init"] == r["init"] and q["seed"] == 0)
            assert r["seed"] > 0 and r["lr"] == first["lr"]

    # flipping every test label changes no choice (C, learning rate, step), only the test accuracy
    flipped = ReviewSplits(splits.train_texts, splits.train_labels, splits.val_texts, splits.val_labels,
                           splits.test_texts, [1 - y for y in splits.test_labels])
    monkeypatch.setattr(finetuning, "review_splits", lambda seed=0: flipped)
    again = label_efficiency("ci", pretrained=pre)
    for a, b in zip(runs, again):
        assert {k: v for k, v in a.items() if k not in ("test_accuracy", "seconds")} == \
            {k: v for k, v in b.items() if k not in ("test_accuracy", "seconds")}
        assert b["test_accuracy"] == pytest.approx(1 - a["test_accuracy"])

    rows = summarize_label_efficiency(runs)
    assert [r["labels"] for r in rows] == [10, 80]
    for row in rows:
        at = [r for r in runs if r["labels"] == row["labels"]]
        diffs = [next(r["test_accuracy"] for r in at if r["init"] == "pretrained" and r["seed"] == s)
                 - next(r["test_accuracy"] for r in at if r["init"] == "random" and r["seed"] == s) for s in (0, 1, 2)]
        assert row["difference"]["mean"] == pytest.approx(sum(diffs) / 3) and row["difference"]["n"] == 3
        assert row["pretrained"]["min"] <= row["pretrained"]["mean"] <= row["pretrained"]["max"]


def test_each_seed_draws_its_own_subset_and_initialisation(tiny_experiment):
    splits, spec, pre = tiny_experiment
    subsets = {s: labelled_subset(splits.train_texts, splits.train_labels, 10, s)[0] for s in spec.seeds}
    assert len({tuple(x) for x in subsets.values()}) == 3
    heads = []
    for s in spec.seeds:
        finetuning.seed_everything(s)
        heads.append(classifier_from(None, pre.model.cfg).score.weight)
    assert not torch.equal(heads[0], heads[1])
    with pytest.raises(ValueError, match=r"unknown initialisations \['bert'\]"):
        label_efficiency("ci", pretrained=pre, inits=("bert",))


def test_early_stopping_restores_the_best_validation_weights(tiny_experiment):
    splits, spec, pre = tiny_experiment
    val = (splits.val_texts, splits.val_labels)
    model = classifier_from(pre, pre.model.cfg)
    result = finetune(model, pre.tokenizer, (splits.train_texts, splits.train_labels), None,
                      FinetuneSpec(16, 8, 3e-3, 200, 2, 3, 2), val=val)
    assert result["steps"] < 200 and result["steps"] == result["best_step"] + 3 * 2
    logits, labels = finetuning.predict(result["model"], finetuning.text_loader(val, pre.tokenizer, 16))
    assert finetuning.accuracy(logits.argmax(-1), labels) == pytest.approx(result["val_accuracy"])
    assert "test_accuracy" not in result


def test_finetune_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="patience must be a positive int, got 0"):
        FinetuneSpec(16, 8, 1e-3, 10, 2, 0)
    with pytest.raises(ValueError, match="lr must be positive"):
        FinetuneSpec(16, 8, 0.0, 10, 2, 1)
    ft = FinetuneSpec(16, 8, 1e-3, 10, 2, 1)
    with pytest.raises(ValueError, match="lrs must give at least one learning rate for each of"):
        LabelEfficiencySpec((10,), (0,), {"pretrained": (1e-3,)}, None, 10, ft)
    with pytest.raises(ValueError, match="lrs must give at least one learning rate"):
        LabelEfficiencySpec((10,), (0,), {"pretrained": (1e-3,), "random": ()}, None, 10, ft)


def test_spread_is_the_sample_statistics():
    s = spread([0.7, 0.8, 0.9])
    assert s["mean"] == pytest.approx(0.8) and s["sd"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["n"]) == (0.7, 0.9, 3)
    assert math.isnan(spread([0.5])["sd"])  # one value has no sample spread
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_length_grouped_batches_cover_every_index_once_per_epoch():
    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    sampler = LengthGroupedBatchSampler(lengths, 8, shuffle=True, pool_batches=5, seed=1)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(203)) and len(first) == len(sampler) == 26
    assert list(sampler) == first  # same (seed, epoch), same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    # batches are drawn from sorted pools: far less padding than random batches
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in first)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(203, generator=g).tolist()
    random_batches = [order[i:i + 8] for i in range(0, 203, 8)]
    random_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in random_batches)
    assert padding < random_padding / 3
    ordered = list(LengthGroupedBatchSampler(lengths, 8, shuffle=False))
    assert [lengths[i] for b in ordered for i in b] == sorted(lengths)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LengthGroupedBatchSampler(lengths, 0)
