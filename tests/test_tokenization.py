"""Character tokenizer, byte-level BPE (tokenizers + transformers) and jieba segmentation."""

import json

import pytest
import torch

from bigmodel_course.tokenization import (
    SPECIAL_TOKENS,
    CharTokenizer,
    bpe_as_transformers,
    load_bpe,
    load_stopwords,
    remove_stopwords,
    save_bpe,
    segment,
    train_bpe,
)

CORPUS = [
    "这本书写得很好，我非常喜欢。",
    "质量太差了，再也不买了！",
    "迈向充满希望的新世纪——一九九八年新年讲话",
    "物流很快，包装完好，推荐购买 good 👍",
    "中央人民广播电台和中央电视台",
]


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.train(CORPUS)


def test_special_ids(tok):
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == (0, 1, 2, 3, 4)
    assert [tok.id_to_token(i) for i in tok.special_ids] == list(SPECIAL_TOKENS)
    assert len(tok) == tok.vocab_size == 5 + len(set("".join(CORPUS)))


def test_round_trip_on_known_characters(tok):
    for text in CORPUS + ["好书", " ", "good 👍"]:
        ids = tok.encode(text)
        assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and len(ids) == len(text) + 2
        assert tok.decode(ids) == text
        assert tok.decode(torch.tensor(ids)) == text
        assert tok.decode(tok.encode(text, add_special=False)) == text


def test_unknown_characters_and_decode_specials(tok):
    ids = tok.encode("好猫", add_special=False)
    assert ids[1] == tok.unk_id
    assert tok.decode(ids) == "好[UNK]"
    assert tok.decode(tok.encode("好"), skip_special=False) == "[CLS]好[SEP]"


def test_train_frequency_order_min_freq_and_max_size():
    tok = CharTokenizer.train(["aab", "ac"], min_freq=1)
    assert tok.vocab == {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, "a": 5, "b": 6, "c": 7}
    assert CharTokenizer.train(["aab", "ac"], min_freq=2).vocab_size == 6
    assert CharTokenizer.train(["aab", "ac"], max_size=6).vocab_size == 6


def test_encode_pair(tok):
    ids, types = tok.encode_pair("好书", "喜欢")
    assert ids == [tok.cls_id, *tok.encode("好书", add_special=False), tok.sep_id,
                   *tok.encode("喜欢", add_special=False), tok.sep_id]
    assert types == [0, 0, 0, 0, 1, 1, 1]
    ids, types = tok.encode_pair("这本书写得很好", "好", max_len=6)
    assert len(ids) == len(types) == 6 and types.count(1) == 2


def test_batch_encode_padding_truncation(tok):
    out = tok.batch_encode(["好书", "这本书写得很好，我非常喜欢。"], max_len=8)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.long and v.shape == (2, 8) for v in out.values())
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert out["input_ids"][0, 4:].tolist() == [tok.pad_id] * 4
    assert out["input_ids"][1, -1].item() == tok.sep_id  # truncation keeps [SEP]
    short = tok.batch_encode(["好书", "好"], max_len=16)
    assert short["input_ids"].shape == (2, 4)  # pads to the longest, not to max_len
    assert tok.batch_encode(["好"], max_len=16, padding="max_length")["input_ids"].shape == (1, 16)
    pairs = tok.batch_encode([("好书", "喜欢"), ("好", "差")], max_len=16)
    assert pairs["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]]


def test_batch_encode_errors(tok):
    with pytest.raises(ValueError, match="truncation=False"):
        tok.batch_encode(["这本书写得很好"], max_len=4, truncation=False)
    with pytest.raises(ValueError, match="equal lengths"):
        tok.batch_encode(["好书", "好"], max_len=8, padding=False)
    with pytest.raises(ValueError, match="non-empty list"):
        tok.batch_encode([], max_len=8)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        tok.batch_encode(["好", ""], max_len=8)


@pytest.mark.parametrize("bad", ["", None, 3, ["好"]])
def test_bad_text_raises(tok, bad):
    with pytest.raises(ValueError, match="text"):
        tok.encode(bad)


def test_bad_training_input():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train([])
    with pytest.raises(ValueError, match="single str"):
        CharTokenizer.train("好书")
    with pytest.raises(ValueError, match="min_freq"):
        CharTokenizer.train(["a"], min_freq=0)
    with pytest.raises(ValueError, match="max_size"):
        CharTokenizer.train(["a"], max_size=5)
    with pytest.raises(ValueError, match="special tokens"):
        CharTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        CharTokenizer.train(["a"]).decode([99])


def test_save_load_json_atomic(tok, tmp_path):
    path = tok.save(tmp_path / "sub" / "vocab.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["vocab.json"]  # no temp file left
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["tokens"][:5] == list(SPECIAL_TOKENS)
    again = CharTokenizer.load(path)
    assert again.vocab == tok.vocab
    assert again.encode(CORPUS[0]) == tok.encode(CORPUS[0])
    tok.save(path)  # overwriting works and still leaves one file
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]


def test_failed_save_keeps_old_file(tok, tmp_path, monkeypatch):
    path = tok.save(tmp_path / "vocab.json")
    before = path.read_bytes()
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        CharTokenizer.train(["完全不同"]).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["vocab.json"]


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        CharTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        CharTokenizer.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a CharTokenizer"):
        CharTokenizer.load(tmp_path / "other.json")


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS * 20, vocab_size=300)


def test_bpe_round_trip_and_specials(bpe):
    assert [bpe.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert 261 < bpe.get_vocab_size() <= 300
    for text in CORPUS + ["没见过的字：猫狗鱼"]:  # byte level: unseen characters still round-trip
        enc = bpe.encode(text)
        assert enc.ids[0] == 2 and enc.ids[-1] == 3
        assert bpe.decode(enc.ids) == text
    assert len(bpe.encode(CORPUS[0], add_special_tokens=False).ids) < len(CORPUS[0].encode("utf-8"))  # merges learned


def test_bpe_save_reload(bpe, tmp_path):
    file = save_bpe(bpe, tmp_path)
    assert file.name == "tokenizer.json" and [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    again = load_bpe(tmp_path)
    assert again.encode(CORPUS[1]).ids == bpe.encode(CORPUS[1]).ids
    trained = train_bpe(CORPUS, vocab_size=270, path=tmp_path / "b")
    assert load_bpe(tmp_path / "b" / "tokenizer.json").get_vocab() == trained.get_vocab()
    with pytest.raises(ValueError, match="not found"):
        load_bpe(tmp_path / "nothing")


def test_bpe_as_transformers(bpe, tmp_path):
    save_bpe(bpe, tmp_path)
    for source in (bpe, tmp_path):
        hf = bpe_as_transformers(source)
        assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (0, 1, 2, 3, 4)
        for text in CORPUS:
            assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
        batch = hf(["好书", CORPUS[0]], padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.shape[0] == 2 and ids.shape == mask.shape
        n = int(mask[0].sum())
        assert n < ids.shape[1] and (ids[0, n:] == hf.pad_token_id).all() and mask[1].all()


def test_bpe_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        train_bpe([], vocab_size=300)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        train_bpe(["好", 3], vocab_size=300)


def test_segment_is_quiet(capfd):
    segment("今天天气很好")
    assert "Building prefix dict" not in capfd.readouterr().err


def test_segment_and_stopwords():
    assert segment("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    stop = load_stopwords()
    assert {"的", "了", "，"} <= stop and len(stop) == 1426  # the distinct non-blank lines of snownlp's list
    words = segment("这本书的内容非常好，我很喜欢。")
    kept = remove_stopwords(words, stop)
    assert "的" in words and "的" not in kept and "喜欢" in kept
    assert segment("这本书的内容非常好，我很喜欢。", stopwords=stop) == kept
    assert " " not in segment("好 书")
    with pytest.raises(ValueError, match="empty"):
        segment("")
    with pytest.raises(ValueError, match="single str"):
        remove_stopwords("的", stop)


def test_fertility_counts_by_hand(tok):
    from bigmodel_course.tokenization import Fertility, bpe_tokens, char_tokens, fertility, whitespace_words

    f = fertility(["ab cd", "ef"], tokenize=list, words=whitespace_words)
    assert f == Fertility(n_texts=2, n_chars=6, n_words=3, n_tokens=7, n_unk=0)  # list() keeps the space
    assert f.tokens_per_char == pytest.approx(7 / 6) and f.tokens_per_word == pytest.approx(7 / 3)
    small = CharTokenizer.train(["好书"])
    g = fertility(["好书好吗"], char_tokens(small), segment)
    assert g.n_tokens == 4 and g.n_unk == 1 and g.unk_rate == pytest.approx(0.25)
    bpe = train_bpe(CORPUS * 20, vocab_size=300)
    h = fertility(["这本书写得很好"], bpe_tokens(bpe), segment)
    assert h.n_unk == 0 and h.n_tokens == len(bpe.encode("这本书写得很好", add_special_tokens=False).ids)
    with pytest.raises(ValueError, match="empty"):
        fertility([], list, whitespace_words)
    with pytest.raises(ValueError, match="single str"):
        fertility("abc", list, whitespace_words)
