"""Pre-train the course's small BERT (MLM, optionally + NSP) and GPT (causal LM) on the offline Chinese corpus, and
load them.

Models live in the cache directory (`model_cache`), one folder per (model, profile):
`model.safetensors`, `config.json`, `tokenizer.json`, `history.json`, `meta.json` and `hf/`
(the same weights as `transformers` BertForPreTraining, or RobertaPreLayerNormForMaskedLM for a pre-LN BERT, /
GPT2LMHeadModel, loadable offline with AutoModelForMaskedLM / AutoModelForCausalLM).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .data import LMBlockDataset, pretraining_corpus, review_splits
from .model_cache import (
    CONFIG_FILE,
    HISTORY_FILE,
    TOKENIZER_FILE,
    load_or_train,
    publish,
    read_json,
    read_meta,
    read_weights,
    write_model_files,
)
from .pretrain_objectives import causal_lm_blocks, make_nsp_pairs, mask_tokens
from .tokenization import CharTokenizer
from .training import Trainer, TrainConfig
from .transformer import GPT, EncoderConfig, EncoderForPreTraining, GPTConfig
from .utils import cache_dir, get_profile, seed_everything

KINDS = ("bert", "gpt")
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class PretrainSpec:
    """Corpus, model and training sizes of one pre-training run."""

    n_texts: int | None  # first n texts of the shuffled corpus; None = all
    max_len: int
    d_model: int
    n_heads: int
    n_layers: int
    batch_size: int
    max_steps: int
    lr: float
    warmup_steps: int
    min_freq: int = 2  # characters seen fewer times become [UNK]
    dropout: float = 0.1  # also the attention dropout
    mask_prob: float = 0.15  # BERT: share of the tokens chosen for MLM
    nsp: bool = True  # BERT: add the next-sentence-prediction loss to MLM
    norm_first: bool = False  # BERT: pre-LN blocks (exported as RobertaPreLayerNorm); the GPT is always pre-LN
    corpus: str = "mixed"  # "mixed": People's Daily + train reviews; "reviews": the train reviews only (in-domain)
    # two-phase schedule (BERT's): the first `short_share` of the steps on sequences of `short_len` tokens, the
    # batch scaled so each step still sees batch_size × max_len tokens; the rest at max_len
    short_len: int | None = None
    short_share: float = 0.0

    def __post_init__(self) -> None:
        if self.short_len is None:
            if self.short_share:
                raise ValueError("short_share needs short_len")
            return
        if not 8 <= self.short_len < self.max_len or self.max_len % self.short_len:
            raise ValueError(f"short_len must divide max_len={self.max_len} and be in [8, max_len), "
                             f"got {self.short_len}")
        if not 0.0 < self.short_share < 1.0:
            raise ValueError(f"short_share must be in (0, 1), got {self.short_share}")


SPECS: dict[tuple[str, str], PretrainSpec] = {
    ("bert", "ci"): PretrainSpec(1500, 64, 64, 2, 2, 16, 30, 1e-3, 5),
    ("gpt", "ci"): PretrainSpec(1500, 64, 64, 2, 2, 16, 30, 1e-3, 5),
    # small-compute recipes measured in Chapter 2, each about twelve minutes alone on two CPU cores. BERT: pre-LN
    # blocks, no dropout (it underfits), MLM alone (NSP adds little, see RoBERTa) on 35 % of the characters
    ("bert", "full"): PretrainSpec(None, 128, 128, 4, 4, 32, 1700, 1e-3, 85, dropout=0.0, mask_prob=0.35, nsp=False,
                                   norm_first=True),
    # the GPT reads only the unlabelled training reviews (task-adaptive pre-training), with dropout as it makes
    # about 7 passes over them
    ("gpt", "full"): PretrainSpec(None, 128, 128, 4, 4, 32, 1500, 1e-3, 75, corpus="reviews"),
}
CORPORA = ("mixed", "reviews")
SNAPSHOTS = (0.25, 0.5)  # shares of the pre-training steps at which a copy of the weights is kept

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")


def split_sentences(text: str) -> list[str]:
    """Split Chinese text after 。！？!?；; keeping the punctuation; empty pieces are dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def nsp_documents(texts: Sequence[str]) -> list[list[str]]:
    """Each text (a news paragraph or a review) as a document of sentences; texts with one sentence are kept too."""
    return [sents for sents in (split_sentences(t) for t in texts) if sents]


def corpus(n_texts: int | None = None, seed: int = 0, name: str = "mixed") -> list[str]:
    """Pre-training texts, shuffled with `seed`; the first n_texts. `name` "mixed" = People's Daily + the
    train-split reviews; "reviews" = the train-split reviews alone (their labels are never read)."""
    if name not in CORPORA:
        raise ValueError(f"unknown pre-training corpus {name!r}; expected one of {CORPORA}")
    if name == "reviews":
        texts = list(dict.fromkeys(review_splits(seed=seed).train_texts))
    else:
        texts = pretraining_corpus(include_reviews=True, seed=seed)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    texts = [texts[i] for i in order]
    return texts if n_texts is None else texts[:n_texts]


class NSPMLMDataset(Dataset):
    """Sentence pairs for BERT pre-training; masking is applied per batch (dynamic masking) by `collate`.

    `mask_prob` is the share of tokens chosen for MLM (BERT: 0.15); with `nsp` False the batches carry no
    next-sentence labels, so the model trains on MLM alone (the pairs still fill each sequence)."""

    def __init__(self, texts: Sequence[str], tokenizer: CharTokenizer, max_len: int, seed: int = 0,
                 mask_prob: float = 0.15, nsp: bool = True) -> None:
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        pairs = make_nsp_pairs(nsp_documents(texts), seed=seed)
        if not pairs:
            raise ValueError("the texts give no sentence pairs: each needs at least two sentences")
        self.tokenizer, self.max_len, self.mask_prob, self.nsp = tokenizer, max_len, mask_prob, nsp
        self.items = []
        for p in pairs:
            ids, types = tokenizer.encode_pair(p.a, p.b, max_len=max_len)
            self.items.append((torch.tensor(ids), torch.tensor(types), p.label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.items[i]

    def collate(self, batch: Sequence[tuple[Tensor, Tensor, int]]) -> dict[str, Tensor]:
        """Pad, then mask `mask_prob` of the tokens (80/10/10) with the global torch RNG."""
        tok = self.tokenizer
        width = max(ids.numel() for ids, _, _ in batch)
        input_ids = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros_like(input_ids)
        for r, (ids, types, _) in enumerate(batch):
            input_ids[r, : ids.numel()], token_type_ids[r, : types.numel()] = ids, types
        attention_mask = (input_ids != tok.pad_id).long()
        masked, labels = mask_tokens(input_ids, tok.mask_id, tok.vocab_size, tok.special_ids, mlm_prob=self.mask_prob)
        out = {"input_ids": masked, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
               "labels": labels}
        if self.nsp:
            out["next_sentence_label"] = torch.tensor([b[2] for b in batch])
        return out


def gpt_stream(texts: Sequence[str], tokenizer: CharTokenizer) -> list[int]:
    """All texts as one token stream, each ended by [SEP] (the GPT's end-of-text token)."""
    stream: list[int] = []
    for t in texts:
        stream += tokenizer.encode(t, add_special=False) + [tokenizer.sep_id]
    return stream


def heldout_loss(model: GPT, tokenizer: CharTokenizer, texts: Sequence[str], batch_size: int = 32) -> float:
    """Mean next-token cross-entropy of a GPT on texts it has not trained on, cut into blocks of its context
    length exactly as in pre-training; exp() of it is the held-out perplexity."""
    blocks = causal_lm_blocks(gpt_stream(texts, tokenizer), model.cfg.max_len)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = sum(model(b, labels=b).loss.item() * len(b) for b in blocks.split(batch_size))
    model.train(was_training)
    return total / len(blocks)


def build_model(kind: str, spec: PretrainSpec, vocab_size: int, pad_id: int):
    """A freshly initialised small BERT (EncoderForPreTraining) or GPT of the given sizes."""
    common = dict(vocab_size=vocab_size, max_len=spec.max_len, d_model=spec.d_model, n_heads=spec.n_heads,
                  n_layers=spec.n_layers, pad_token_id=pad_id, dropout=spec.dropout, attn_dropout=spec.dropout)
    if kind == "bert":
        return EncoderForPreTraining(EncoderConfig(**common, norm_first=spec.norm_first))
    return GPT(GPTConfig(**common))


def model_dir(kind: str, profile: str, root: Path | None = None) -> Path:
    """Folder of one pre-trained model in the cache."""
    _check(kind, profile)
    return (root or cache_dir("pretrained")) / f"{kind}-{profile}"


def _check(kind: str, profile: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r}; expected one of {KINDS}")
    get_profile(profile)


def _pretraining_loader(kind: str, spec: PretrainSpec, texts: list[str], tokenizer: CharTokenizer, length: int):
    """(dataset, loader) of `length`-token examples; the batch holds spec.batch_size × spec.max_len tokens."""
    batch = spec.batch_size * spec.max_len // length
    if kind == "bert":
        data = NSPMLMDataset(texts, tokenizer, length, mask_prob=spec.mask_prob, nsp=spec.nsp)
        return data, DataLoader(data, batch_size=batch, shuffle=True, collate_fn=data.collate)
    data = LMBlockDataset(gpt_stream(texts, tokenizer), length)
    return data, DataLoader(data, batch_size=batch, shuffle=True)


def pretrain(kind: str, profile: str = "full", root: Path | None = None, progress: bool = True) -> Path:
    """Pre-train `kind` ('bert' or 'gpt') for `profile` and publish it atomically in the cache; returns its folder."""
    _check(kind, profile)
    spec = SPECS[(kind, profile)]
    seed_everything(0)
    # the vocabulary always comes from the mixed corpus, so models trained on either corpus share the tokenizer
    tokenizer = CharTokenizer.train(corpus(spec.n_texts), min_freq=spec.min_freq)
    texts = corpus(spec.n_texts, name=spec.corpus)
    model = build_model(kind, spec, tokenizer.vocab_size, tokenizer.pad_id)
    data, loader = _pretraining_loader(kind, spec, texts, tokenizer, spec.max_len)
    config = TrainConfig(lr=spec.lr, max_steps=spec.max_steps, warmup_steps=spec.warmup_steps,
                         weight_decay=0.01, log_every=10, progress=progress)
    switch = round(spec.max_steps * spec.short_share) if spec.short_len else 0
    trainer = Trainer(model, config, _pretraining_loader(kind, spec, texts, tokenizer, spec.short_len)[1]
                      if switch else loader)
    keep = {round(spec.max_steps * share) for share in SNAPSHOTS}
    snapshots = {}
    start = time.perf_counter()
    for point in sorted(keep | ({switch, spec.max_steps} - {0})):
        if point > trainer.step:
            trainer.train(steps=point - trainer.step)
        if point == switch:
            trainer.replace_train_loader(loader)
        if point in keep:
            snapshots[trainer.step] = copy.deepcopy(model).cpu()
    seconds = time.perf_counter() - start
    meta = {"kind": kind, "profile": profile, "spec": asdict(spec), "train_seconds": round(seconds, 1),
            "n_texts": len(texts), "n_examples": len(data), "steps": trainer.step,
            "snapshots": sorted(snapshots), "device": str(trainer.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return _publish(model.cpu(), tokenizer, trainer.history, meta, model_dir(kind, profile, root), snapshots)


def _publish(model, tokenizer: CharTokenizer, history: list[dict], meta: dict, target: Path,
             snapshots: dict[int, torch.nn.Module] | None = None) -> Path:
    """Publish the model folder atomically (with the `transformers` copy in hf/ and the earlier snapshots in
    snapshots/step-N.safetensors), so a crash never leaves half."""
    from .interop import encoder_to_hf, gpt_to_hf

    with publish(target) as tmp:
        write_model_files(tmp, model, meta, config=model.cfg.to_dict(), tokenizer=tokenizer, history=history)
        hf = encoder_to_hf(model) if meta["kind"] == "bert" else gpt_to_hf(model)
        hf.save_pretrained(tmp / "hf")
        if snapshots:
            (tmp / SNAPSHOT_DIR).mkdir()
            for step, snap in snapshots.items():
                save_model(snap, str(tmp / SNAPSHOT_DIR / f"step-{step}.safetensors"))
    return target


@dataclass
class Pretrained:
    """A loaded pre-trained model with its tokenizer, training history and run facts."""

    model: torch.nn.Module
    tokenizer: CharTokenizer
    history: list[dict]
    meta: dict
    path: Path


def load_pretrained(kind: str, profile: str | None = None, root: Path | None = None,
                    train_if_missing: bool = True, progress: bool = True) -> Pretrained:
    """Load the pre-trained `kind` of a profile from the cache, pre-training it first when it is missing, was
    trained with another recipe than `SPECS` holds now, or predates the snapshots every pre-training keeps."""
    profile = get_profile(profile).name
    build = EncoderForPreTraining if kind == "bert" else GPT
    cfg_cls = EncoderConfig if kind == "bert" else GPTConfig

    def read(folder: Path) -> Pretrained:
        model, tokenizer, meta = read_model_folder(folder, cfg_cls, build)
        if "spec" in meta:
            meta["spec"] = spec_with_defaults(meta["spec"])
        return Pretrained(model, tokenizer, read_json(folder, HISTORY_FILE), meta, folder)

    def stale(folder: Path) -> bool:  # another recipe, or written before pre-training kept snapshots
        meta = read_meta(folder)
        return not same_recipe(meta.get("spec", {}), SPECS[(kind, profile)]) or "snapshots" not in meta

    return load_or_train(model_dir(kind, profile, root), lambda: pretrain(kind, profile, root, progress), read,
                         what=f"pre-trained {kind}", train_if_missing=train_if_missing, stale=stale,
                         missing_hint=f"; run `bigmodel-course pretrain --model {kind} --profile {profile}`")


def same_recipe(stored: dict, spec: PretrainSpec) -> bool:
    """True when a cached model's recorded spec is `spec`; fields it does not record (it predates them) count
    as their defaults, which reproduce what was trained before they existed."""
    return spec_with_defaults(stored) == asdict(spec)


def spec_with_defaults(stored: dict) -> dict:
    """A recorded spec with the fields added after it was written filled in with their defaults."""
    return {**{f.name: f.default for f in fields(PretrainSpec) if f.default is not MISSING}, **stored}


def load_snapshot(pre: Pretrained, step: int) -> Pretrained:
    """The same pre-training run as `pre`, as it was after `step` steps (one of `pre.meta["snapshots"]`)."""
    steps = pre.meta.get("snapshots", [])
    if step not in steps:
        raise ValueError(f"no snapshot at step {step} of {pre.path}; snapshots: {steps}")
    model = type(pre.model)(type(pre.model.cfg).from_dict(pre.model.cfg.to_dict()))
    load_model(model, str(pre.path / SNAPSHOT_DIR / f"step-{step}.safetensors"))
    meta = {**pre.meta, "steps": step, "snapshot_of": pre.meta["steps"]}
    return Pretrained(model.eval(), pre.tokenizer, [h for h in pre.history if h["step"] <= step], meta, pre.path)


def read_model_folder(folder: Path, cfg_cls: type, build: Callable) -> tuple[torch.nn.Module, CharTokenizer, dict]:
    """(model in eval mode, tokenizer, meta) of a cached folder of config/model/tokenizer/meta files."""
    model = read_weights(build(cfg_cls.from_dict(read_json(folder, CONFIG_FILE))), folder)
    return model, CharTokenizer.load(folder / TOKENIZER_FILE), read_meta(folder)
