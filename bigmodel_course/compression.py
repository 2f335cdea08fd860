"""Model compression: magnitude and structured pruning, int8 quantization, knowledge distillation, weight files."""

from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset

from .data import ClassificationDataset, review_splits
from .evaluation import accuracy
from .finetuning import predict, text_loader
from .model_cache import (
    CONFIG_FILE,
    HISTORY_FILE,
    load_or_train,
    publish,
    read_json,
    read_meta,
    read_weights,
    write_model_files,
)
from .tokenization import CharTokenizer
from .training import TrainConfig, Trainer
from .transformer import FeedForward, GPTConfig, GPTForSequenceClassification
from .utils import cache_dir, get_profile, seed_everything

DynamicQuantLinear = torch.ao.nn.quantized.dynamic.Linear


# --------------------------------------------------------------------------- weight files

def file_size_mb(path: str | os.PathLike) -> float:
    """Size of a file on disk in megabytes (10^6 bytes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    return path.stat().st_size / 1e6


def is_int8(model: nn.Module) -> bool:
    """True when the model holds int8 layers made by `quantize_int8`."""
    return any(isinstance(m, (DynamicQuantLinear, Int8Embedding)) for m in model.modules())


def _quantized_prefixes(model: nn.Module) -> set[str]:
    return {f"{n}." for n, m in model.named_modules() if isinstance(m, DynamicQuantLinear)}


def int8_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Plain tensors of a `quantize_int8` model: int8 weights, their scales and zero points, float rest."""
    out: dict[str, Tensor] = {}
    quantized = _quantized_prefixes(model)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, DynamicQuantLinear):
            w, bias = module.weight(), module.bias()
            out[prefix + "weight_int8"] = w.int_repr().contiguous()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                out[prefix + "weight_scale"] = w.q_per_channel_scales().float()
                out[prefix + "weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int8)
            else:
                out[prefix + "weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float32)
                out[prefix + "weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int8)
            if bias is not None:
                out[prefix + "bias"] = bias.detach().contiguous()
        elif not any(prefix.startswith(q) for q in quantized):
            for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if t is not None:
                    out[prefix + key] = t.detach().contiguous()
    return out


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a float or `quantize_int8` model as safetensors (never pickle) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_int8(model):
        save_file(int8_state_dict(model), str(path))
    else:
        save_model(model, str(path))
    return path


def load_int8(skeleton: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file written by `save_weights` for an int8 model into a float `skeleton` of the same architecture."""
    tensors = load_file(str(path))
    model = quantize_int8(skeleton)
    quantized = _quantized_prefixes(model)

    def take(key: str) -> Tensor:
        if key not in tensors:
            raise ValueError(f"{path} does not fit the model: no tensor {key!r}")
        return tensors.pop(key)

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, DynamicQuantLinear):
            q, s, z = take(prefix + "weight_int8"), take(prefix + "weight_scale"), take(prefix + "weight_zero_point")
            if s.numel() == 1:
                w = torch._make_per_tensor_quantized_tensor(q, float(s), int(z))
            else:
                w = torch._make_per_channel_quantized_tensor(q, s.double(), z.long(), 0)
            module.set_weight_bias(w, take(prefix + "bias") if module.bias() is not None else None)
        elif not any(prefix.startswith(p) for p in quantized):
            for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if t is not None:
                    t.data.copy_(take(prefix + key))
    if tensors:
        raise ValueError(f"{path} does not fit the model: unexpected tensors {sorted(tensors)[:5]}")
    return model


# --------------------------------------------------------------------------- pruning

def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The float Linear layers inside the Transformer blocks (attention and feed-forward projections)."""
    body = getattr(model, "transformer", model)
    layers = [(n, m) for n, m in body.named_modules() if isinstance(m, nn.Linear) and ".layers." in f".{n}"]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear layers inside Transformer blocks to prune")
    return layers


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable Linear layers."""
    zeros = total = 0
    for _, layer in prunable_linears(model):
        zeros += int((layer.weight == 0).sum())
        total += layer.weight.numel()
    return zeros / total


def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """A copy with the `amount` fraction of smallest-|w| weights of every prunable Linear set to zero, permanently."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    pruned = copy.deepcopy(model)
    for _, layer in prunable_linears(pruned):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")  # weight = weight_orig * mask, the mask is gone
    return pruned


def magnitude_amount_for_share(model: nn.Module, share: float) -> float:
    """The per-layer `amount` for magnitude_prune that zeroes `share` of all the model's parameters.

    Use it to compare unstructured with structured pruning at equal shares: pass the share of parameters that
    prune_ffn_neurons removed, and both variants lose (zero or delete) the same number of parameters.
    """
    from .utils import count_parameters

    prunable = sum(layer.weight.numel() for _, layer in prunable_linears(model))
    amount = share * count_parameters(model) / prunable
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"share {share} needs amount {amount:.3f} of the block Linear weights; must be in [0, 1)")
    return amount


def pruned_share(original: nn.Module, pruned: nn.Module) -> float:
    """Share of the original's parameters that are gone in `pruned`: deleted (structured) or set to zero
    (new exact zeros among the block Linear weights, as magnitude_prune makes them)."""
    from .utils import count_parameters

    def zeros(model: nn.Module) -> int:
        return sum(int((layer.weight == 0).sum()) for _, layer in prunable_linears(model))

    total = count_parameters(original)
    return (total - count_parameters(pruned) + zeros(pruned) - zeros(original)) / total


def ffn_neuron_scores(model: nn.Module) -> list[Tensor]:
    """Per block, the importance of each feed-forward neuron: ||W1[i, :]|| * ||W2[:, i]||."""
    blocks = [m for m in model.modules() if isinstance(m, FeedForward)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no feed-forward blocks")
    return [ffn.fc1.weight.detach().norm(dim=1) * ffn.fc2.weight.detach().norm(dim=0) for ffn in blocks]


def kept_neurons(model: nn.Module, keep: float) -> list[Tensor]:
    """Sorted indices of the round(keep * d_ff) highest-scoring feed-forward neurons of every block."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    scores = ffn_neuron_scores(model)
    k = max(1, round(keep * scores[0].numel()))
    return [s.topk(k).indices.sort().values for s in scores]


def _slice_linear(layer: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    w = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    if rows is not None:
        w, b = w[rows], None if b is None else b[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def prune_ffn_neurons(model: nn.Module, keep: float) -> nn.Module:
    """A copy whose feed-forward layers keep only the highest-scoring neurons: smaller matrices, cfg.d_ff updated."""
    pruned = copy.deepcopy(model)
    kept = kept_neurons(pruned, keep)
    for ffn, idx in zip([m for m in pruned.modules() if isinstance(m, FeedForward)], kept):
        ffn.fc1 = _slice_linear(ffn.fc1, rows=idx)
        ffn.fc2 = _slice_linear(ffn.fc2, cols=idx)
    if hasattr(pruned, "cfg"):
        pruned.cfg.d_ff = int(kept[0].numel())  # the copy's blocks share this config object
    return pruned


# --------------------------------------------------------------------------- quantization

class Int8Embedding(nn.Module):
    """Weight-only int8 embedding table: one symmetric scale per row, rows dequantized on lookup."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        # named `weight` like nn.Embedding's, so code that reads `.weight.device` keeps working
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, 1))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> "Int8Embedding":
        """Quantize a float embedding table row by row: q = round(w / s), s = max|w_row| / 127."""
        w = emb.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
        out = cls(*w.shape)
        out.weight.copy_(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        out.scale.copy_(scale)
        return out

    def dequantize(self) -> Tensor:
        """The float table the int8 one stands for."""
        return self.weight.float() * self.scale

    def forward(self, ids: Tensor) -> Tensor:
        """Look up rows (any shape of ids) and dequantize only those."""
        return self.weight[ids].float() * self.scale[ids]


def quantize_int8(model: nn.Module, embeddings: bool = True) -> nn.Module:
    """An eval-mode copy with int8 dynamic quantization of every Linear (per-channel weights, activations quantized
    on the fly) and, with `embeddings`, weight-only int8 embedding tables."""
    q = copy.deepcopy(model).eval()
    if embeddings:
        for name, module in list(q.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Embedding):
                    setattr(module, child_name, Int8Embedding.from_float(child))
    with warnings.catch_warnings():  # torch.ao eager quantization still works in torch 2.x but warns it is deprecated
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(
            q, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, inplace=False)
    return q


# --------------------------------------------------------------------------- distillation

def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None,
                      temperature: float = 2.0, alpha: float = 0.5) -> Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if labels is None and alpha < 1.0:
        raise ValueError("labels are needed when alpha < 1 (the cross-entropy part)")
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                  F.log_softmax(teacher_logits.detach() / temperature, dim=-1),
                  reduction="batchmean", log_target=True)
    loss = alpha * temperature**2 * kl
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


class DistillationModel(nn.Module):
    """Wraps a student classifier: with teacher_logits in the batch the loss is `distillation_loss`, else CE."""

    def __init__(self, student: nn.Module, temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__()
        self.student, self.temperature, self.alpha = student, temperature, alpha

    def forward(self, input_ids, attention_mask=None, labels=None, teacher_logits=None):
        """The student's output, its loss replaced by the distillation loss when teacher logits are given."""
        out = self.student(input_ids, attention_mask, labels=labels)
        if teacher_logits is not None:
            out.loss = distillation_loss(out.logits, teacher_logits, labels, self.temperature, self.alpha)
        return out


class _WithTeacher(Dataset):
    """A ClassificationDataset whose items also carry the teacher's logits."""

    def __init__(self, base: ClassificationDataset, logits: Tensor) -> None:
        if len(base) != logits.shape[0]:
            raise ValueError(f"{len(base)} examples but {logits.shape[0]} teacher logits")
        self.base, self.logits = base, logits

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**self.base[i], "teacher_logits": self.logits[i]}

    def collate(self, batch):
        logits = torch.stack([b.pop("teacher_logits") for b in batch])
        return {**self.base.collate(batch), "teacher_logits": logits}


@torch.no_grad()
def classifier_logits(model: nn.Module, tokenizer: CharTokenizer, texts: list[str], max_len: int,
                      batch_size: int = 128) -> Tensor:
    """Logits (N, C) of a text classifier over texts, in order (model set to eval mode)."""
    return predict(model, text_loader((texts, [0] * len(texts)), tokenizer, max_len, batch_size))[0]


def classifier_accuracy(model: nn.Module, tokenizer: CharTokenizer, texts: list[str], labels: list[int],
                  max_len: int) -> float:
    """Accuracy of a text classifier on labelled texts."""
    return accuracy(classifier_logits(model, tokenizer, texts, max_len).argmax(-1), torch.tensor(labels))


@dataclass(frozen=True)
class DistillSpec:
    """Student size and training budget of one profile (the same for the distilled student and the control)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_train: int | None  # None: the whole training split
    n_val: int
    n_test: int | None  # None: the whole test split
    batch_size: int
    steps: int
    lr: float
    eval_every: int
    temperature: float
    alpha: float
    seeds: tuple[int, ...] = (0,)  # each seed: its own student initialisation and data order, for both kinds


DISTILL_SPECS = {
    "ci": DistillSpec(1, 32, 1, 320, 64, 200, 32, 10, 2e-3, 5, 2.0, 0.5),
    "full": DistillSpec(2, 64, 2, None, 600, None, 32, 800, 1e-3, 100, 2.0, 0.5, seeds=(0, 1, 2, 3, 4)),
}
STUDENT_KINDS = ("distilled", "control")


def student_config(teacher_cfg: GPTConfig, spec: DistillSpec) -> GPTConfig:
    """The student's GPT config: the teacher's vocabulary and context, the spec's depth and width.

    The student has one key/value head per query head (`n_kv_heads=None`), whatever the teacher shares.
    """
    return GPTConfig.from_dict({**teacher_cfg.to_dict(), "n_layers": spec.n_layers, "d_model": spec.d_model,
                                "n_heads": spec.n_heads, "n_kv_heads": None, "d_ff": 4 * spec.d_model})


def _subset(texts: list[str], labels: list[int], n: int | None) -> tuple[list[str], list[int]]:
    """The first n examples of a (shuffled, stratified) split, or all of them when n is None."""
    return list(texts[:n]), list(labels[:n])


def train_student(teacher: nn.Module, tokenizer: CharTokenizer, spec: DistillSpec, distill: bool,
                  seed: int = 0, progress: bool = False) -> dict:
    """Train a randomly initialised student from the spec; with `distill` on the teacher's soft labels too.

    Both kinds see the same data order, steps and validation selection (identical budget and seed)."""
    splits = review_splits(seed=0)
    train = _subset(splits.train_texts, splits.train_labels, spec.n_train)
    val = _subset(splits.val_texts, splits.val_labels, spec.n_val)
    max_len = teacher.cfg.max_len
    base = ClassificationDataset(*train, tokenizer, max_len)
    ds = _WithTeacher(base, classifier_logits(teacher, tokenizer, train[0], max_len)) if distill else base
    seed_everything(seed)
    student = GPTForSequenceClassification(student_config(teacher.cfg, spec))
    wrapped = DistillationModel(student, spec.temperature, spec.alpha if distill else 0.0)
    val_ds = ClassificationDataset(*val, tokenizer, max_len)
    config = TrainConfig(lr=spec.lr, max_steps=spec.steps, warmup_steps=spec.steps // 10, seed=seed,
                         progress=progress, eval_every=spec.eval_every, monitor="eval_accuracy", mode="max",
                         restore_best=True)
    trainer = Trainer(wrapped, config, DataLoader(ds, batch_size=spec.batch_size, shuffle=True, collate_fn=ds.collate),
                      eval_loader=DataLoader(val_ds, batch_size=128, collate_fn=val_ds.collate),
                      metrics_fn=lambda logits, labels: {"accuracy": accuracy(logits.argmax(-1), labels)})
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    return {"model": trainer.model.student.eval(), "history": history, "seconds": seconds, "steps": trainer.step,
            "best_step": trainer.best_step}


def student_dir(kind: str, profile: str | None = None, root: Path | None = None, seed: int = 0) -> Path:
    """Cache folder of the distilled or control student of a profile trained with `seed`."""
    if kind not in STUDENT_KINDS:
        raise ValueError(f"unknown student {kind!r}; expected one of {STUDENT_KINDS}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    suffix = "" if seed == 0 else f"-seed{seed}"
    return (root or cache_dir("students")) / f"{kind}-{get_profile(profile).name}{suffix}"


def _stale(path: Path, teacher) -> bool:
    """True when the cached student was distilled from another version of the teacher than `teacher`."""
    try:
        stored = read_meta(path).get("teacher_created")
    except (OSError, ValueError):
        return True
    return stored != teacher.meta.get("created")


@dataclass
class Student:
    """A trained student classifier with its run facts (steps, seconds, test accuracy, spec)."""

    model: GPTForSequenceClassification
    meta: dict
    history: list[dict]
    path: Path


def load_student(kind: str, teacher, profile: str | None = None, root: Path | None = None,
                 train_if_missing: bool = True, progress: bool = False, seed: int = 0) -> Student:
    """Load the `kind` student of a profile trained with `seed` from the cache, training it from `teacher` (a
    SentimentClassifier) when missing; published atomically."""
    profile = get_profile(profile).name
    path = student_dir(kind, profile, root, seed)

    def train() -> None:
        spec = DISTILL_SPECS[profile]
        result = train_student(teacher.model, teacher.tokenizer, spec, distill=kind == "distilled", seed=seed,
                               progress=progress)
        splits = review_splits(seed=0)
        test = _subset(splits.test_texts, splits.test_labels, spec.n_test)
        meta = {"kind": kind, "profile": profile, "seed": seed, "spec": spec.__dict__, "steps": result["steps"],
                "best_step": result["best_step"], "train_seconds": round(result["seconds"], 1),
                "test_accuracy": classifier_accuracy(result["model"], teacher.tokenizer, *test,
                                                     teacher.model.cfg.max_len),
                "teacher": str(teacher.path), "teacher_created": teacher.meta.get("created"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with publish(path) as tmp:
            write_model_files(tmp, result["model"], meta, config=result["model"].cfg.to_dict(),
                              history=result["history"])

    def read(folder: Path) -> Student:
        model = GPTForSequenceClassification(GPTConfig.from_dict(read_json(folder, CONFIG_FILE)))
        return Student(read_weights(model, folder), read_meta(folder), read_json(folder, HISTORY_FILE), folder)

    return load_or_train(path, train, read, what=f"{kind} student distilled from this teacher",
                         train_if_missing=train_if_missing, stale=lambda folder: _stale(folder, teacher))
