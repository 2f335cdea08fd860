"""Pre-training entry points (ci profile, tiny and fast) and the cache they publish to."""

import shutil

import pytest
import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel

from bigmodel_course.data import review_splits
import bigmodel_course.pretrained as pretrained_module
from bigmodel_course.pretrained import (
    SPECS,
    NSPMLMDataset,
    corpus,
    heldout_loss,
    load_pretrained,
    load_snapshot,
    same_recipe,
    spec_with_defaults,
    model_dir,
    nsp_documents,
    pretrain,
    split_sentences,
)
from bigmodel_course.pretrain_objectives import IGNORE_INDEX
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_sentence_split_and_documents():
    assert split_sentences("今天很好。明天呢？好！") == ["今天很好。", "明天呢？", "好！"]
    assert nsp_documents(["一。二。", "  ", "三"]) == [["一。", "二。"], ["三"]]


def test_corpus_holds_no_validation_or_test_review():
    texts = set(corpus())
    held_out = review_splits()
    assert not texts & set(held_out.test_texts) and not texts & set(held_out.val_texts)
    assert corpus(100) == corpus(100) and len(corpus(100)) == 100


def test_the_reviews_corpus_is_the_training_reviews_alone():
    splits = review_splits()
    reviews = corpus(name="reviews")
    assert set(reviews) == set(splits.train_texts) and len(reviews) == len(set(splits.train_texts))
    assert set(reviews) < set(corpus())  # the mixed corpus holds them, plus the news
    with pytest.raises(ValueError, match="unknown pre-training corpus 'news'"):
        corpus(name="news")


def test_heldout_loss_is_the_mean_next_token_cross_entropy():
    texts = ["今天天气很好。", "这本书写得不错，值得一读。", "房间太小。"] * 4
    tok = CharTokenizer.train(texts, min_freq=1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=8, d_model=16, n_heads=2, n_layers=1,
                          pad_token_id=tok.pad_id)).train()
    stream = [i for t in texts for i in tok.encode(t, add_special=False) + [tok.sep_id]]
    blocks = torch.tensor(stream[: len(stream) // 8 * 8]).view(-1, 8)
    with torch.no_grad():
        logits = model.eval()(blocks).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, tok.vocab_size), blocks[:, 1:].reshape(-1))
    model.train()
    assert heldout_loss(model, tok, texts, batch_size=3) == pytest.approx(expected.item(), rel=1e-5)
    assert model.training  # left as it was


def test_bert_batches_are_masked_pairs():
    texts = corpus(200)
    tok = CharTokenizer.train(texts)
    data = NSPMLMDataset(texts, tok, max_len=48)
    batch = data.collate([data[i] for i in range(8)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["token_type_ids"].shape
    assert batch["next_sentence_label"].shape == (8,)
    chosen = batch["labels"] != IGNORE_INDEX
    assert chosen.any() and torch.all(batch["attention_mask"][chosen] == 1)
    assert torch.all(batch["input_ids"][:, 0] == tok.cls_id)


def test_mlm_only_batches_mask_the_share_asked_for():
    texts = corpus(300)
    tok = CharTokenizer.train(texts)
    shares = {}
    for p in (0.15, 0.35):
        data = NSPMLMDataset(texts, tok, max_len=64, mask_prob=p, nsp=False)
        torch.manual_seed(0)
        batch = data.collate([data[i] for i in range(64)])
        assert "next_sentence_label" not in batch
        ordinary = (batch["attention_mask"] == 1) & ~torch.isin(
            torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"]),
            torch.tensor(tok.special_ids))
        shares[p] = float((batch["labels"] != IGNORE_INDEX).sum() / ordinary.sum())
    assert shares[0.15] == pytest.approx(0.15, abs=0.02) and shares[0.35] == pytest.approx(0.35, abs=0.02)
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\), got 1.0"):
        NSPMLMDataset(texts, tok, max_len=64, mask_prob=1.0)


def test_gpt_pretrains_publishes_and_loads_in_transformers(root):
    path = pretrain("gpt", "ci", root=root, progress=False)
    assert path == model_dir("gpt", "ci", root)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "history.json", "meta.json", "hf"):
        assert (path / name).exists(), name
    loaded = load_pretrained("gpt", "ci", root=root)
    assert loaded.meta["steps"] == 30 and loaded.history[-1]["step"] == 30
    assert loaded.history[-1]["train_loss"] < loaded.history[0]["train_loss"]
    hf = GPT2LMHeadModel.from_pretrained(path / "hf").eval()
    ids = torch.tensor([loaded.tokenizer.encode("人民日报", add_special=False)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)
    assert not list(root.glob(".*tmp*")), "temporary folders left behind"


def test_snapshots_are_the_same_run_earlier(root):
    pretrain("gpt", "ci", root=root, progress=False)
    final = load_pretrained("gpt", "ci", root=root)
    assert final.meta["snapshots"] == [8, 15]  # a quarter and a half of 30 steps
    ids = torch.tensor([final.tokenizer.encode("人民日报", add_special=False)])
    quarter, half = load_snapshot(final, 8), load_snapshot(final, 15)
    assert quarter.meta["steps"] == 8 and all(h["step"] <= 8 for h in quarter.history)
    assert len(half.history) < len(final.history)
    with torch.no_grad():
        outs = [m.model(ids).logits for m in (quarter, half, final)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    with pytest.raises(ValueError, match=r"no snapshot at step 9 .*snapshots: \[8, 15\]"):
        load_snapshot(final, 9)


def test_a_spec_recorded_before_a_field_existed_is_the_same_recipe():
    spec = SPECS[("bert", "ci")]  # the new fields at their defaults
    later = ("dropout", "mask_prob", "nsp", "norm_first", "corpus", "short_len", "short_share")
    old = {k: v for k, v in spec.__dict__.items() if k not in later}
    assert same_recipe(old, spec) and same_recipe(dict(spec.__dict__), spec)
    assert spec_with_defaults(old) == dict(spec.__dict__)  # how load_pretrained reports such a model's spec
    assert not same_recipe({**old, "mask_prob": 0.35}, spec) and not same_recipe({**old, "max_steps": 1}, spec)


def test_a_cached_model_of_another_recipe_is_trained_again(root, monkeypatch):
    first = load_pretrained("gpt", "ci", root=root)
    spec = SPECS[("gpt", "ci")]
    monkeypatch.setitem(pretrained_module.SPECS, ("gpt", "ci"), type(spec)(**{**spec.__dict__, "max_steps": 12}))
    again = load_pretrained("gpt", "ci", root=root, progress=False)
    assert again.meta["steps"] == 12 and again.meta["created"] >= first.meta["created"]
    monkeypatch.undo()
    assert load_pretrained("gpt", "ci", root=root, progress=False).meta["steps"] == 30


def test_a_cached_model_without_snapshots_is_trained_again(root, monkeypatch):
    load_pretrained("gpt", "ci", root=root, progress=False)
    calls, real_pretrain, read_meta = [], pretrained_module.pretrain, pretrained_module.read_meta
    monkeypatch.setattr(pretrained_module, "pretrain", lambda *a, **k: calls.append(a) or real_pretrain(*a, **k))
    load_pretrained("gpt", "ci", root=root, progress=False)
    assert not calls  # a complete cache is reused
    monkeypatch.setattr(pretrained_module, "read_meta",
                        lambda folder: {k: v for k, v in read_meta(folder).items() if k != "snapshots"})
    again = load_pretrained("gpt", "ci", root=root, progress=False)
    assert len(calls) == 1 and (again.path / "snapshots").is_dir()


def test_two_phase_pretraining_switches_to_full_length_sequences(tmp_path, monkeypatch):
    switches, lengths = [], []

    class Recording(pretrained_module.Trainer):
        def replace_train_loader(self, loader):
            switches.append(self.step)
            super().replace_train_loader(loader)

        def _to_device(self, batch):
            lengths.append(tuple(batch["input_ids"].shape))
            return super()._to_device(batch)

    spec = SPECS[("bert", "ci")]
    monkeypatch.setitem(pretrained_module.SPECS, ("bert", "ci"),
                        type(spec)(**{**spec.__dict__, "short_len": 32, "short_share": 0.5}))
    monkeypatch.setattr(pretrained_module, "Trainer", Recording)
    loaded = load_pretrained("bert", "ci", root=tmp_path, progress=False)
    assert switches == [15] and loaded.meta["steps"] == 30 and loaded.meta["spec"]["short_len"] == 32
    assert all(n == 32 and t <= 32 for n, t in lengths[:15])  # twice the batch of half-length pairs
    assert all(n == 16 for n, _ in lengths[15:]) and max(t for _, t in lengths[15:]) > 32
    for bad, error in [({"short_len": 48}, "short_len must divide"), ({"short_len": 32}, "short_share must be in"),
                       ({"short_share": 0.5}, "short_share needs short_len")]:
        with pytest.raises(ValueError, match=error):
            type(spec)(**{**spec.__dict__, **bad})


def test_bert_pretrains_and_loads_as_bert_for_masked_lm(root):
    path = pretrain("bert", "ci", root=root, progress=False)
    loaded = load_pretrained("bert", "ci", root=root)
    hf = BertForMaskedLM.from_pretrained(path / "hf").eval()
    enc = loaded.tokenizer.batch_encode(["经济发展很快。"], max_len=32)
    with torch.no_grad():
        ours = loaded.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits
        theirs = hf(**enc).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_loading_reuses_the_cache_and_reports_problems(root, tmp_path):
    first = load_pretrained("gpt", "ci", root=root).meta["created"]
    assert load_pretrained("gpt", "ci", root=root).meta["created"] == first  # not trained again
    with pytest.raises(FileNotFoundError, match="bigmodel-course pretrain --model bert --profile ci"):
        load_pretrained("bert", "ci", root=tmp_path, train_if_missing=False)
    broken = model_dir("gpt", "ci", tmp_path)
    shutil.copytree(model_dir("gpt", "ci", root), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable .*model.safetensors has 22 bytes.*delete it to retrain"):
        load_pretrained("gpt", "ci", root=tmp_path)
    (broken / "manifest.json").unlink()  # a folder never completely published counts as missing
    with pytest.raises(FileNotFoundError, match="no pre-trained gpt"):
        load_pretrained("gpt", "ci", root=tmp_path, train_if_missing=False)
    with pytest.raises(ValueError, match="unknown model 't5'"):
        pretrain("t5", "ci", root=tmp_path)
    with pytest.raises(ValueError, match="unknown run profile 'huge'"):
        model_dir("gpt", "huge")
