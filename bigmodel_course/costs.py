"""What training and running a Transformer costs: parameters, memory, FLOPs — on paper and measured.

Formulas (b = batch, s = sequence length, h = width d_model, a = heads, L = layers, V = vocabulary,
N = parameters that take part in matrix multiplications, i.e. every weight matrix of the blocks plus the
output projection onto the vocabulary):

* parameters of a block: attention 4h² + 4h (Q, K, V, output, with biases; with grouped-query attention the K and
  V projections shrink to h·k each, k = n_kv_heads · head width), feed-forward 2·h·f + f + h (3·h·f for a gated
  SwiGLU without biases), LayerNorms 4h;
* KV cache: every layer keeps a key and a value vector of width k per token, 2·L·k values per token — for
  multi-head attention k = h; grouped-query attention divides it by n_heads / n_kv_heads;
* training memory with AdamW in fp32: 4 bytes of weights + 4 of gradients + 8 of Adam's two moments = 16 bytes
  per parameter; mixed precision keeps bf16/fp16 weights and gradients (2 + 2) plus an fp32 master copy
  and the moments (4 + 8) — also 16 bytes (the ZeRO paper's "2 + 2 + 12");
* activation memory kept for backward (Korthikanti et al. 2022, 16-bit values, one-byte dropout masks):
  per layer s·b·h·(34 + 5·a·s/h) bytes; the 5·a·s/h part is the (s × s) attention matrices, which a fused
  attention kernel (FlashAttention, scaled_dot_product_attention) does not store;
* FLOPs per token (Kaplan et al. 2020; PaLM appendix B): forward 2·N + 4·L·s·h (the second term is Q·Kᵀ
  and attention·V over a context of s), backward twice the forward, so training ≈ 6·N + 12·L·s·h and
  inference ≈ 2·N + 4·L·s·h.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .generation import kv_cache_bytes
from .transformer import TransformerConfig

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class ArchSpec:
    """The sizes of a decoder or encoder Transformer that its costs depend on."""

    name: str
    vocab_size: int
    max_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: n_heads
    learned_positions: bool = True  # a learned position table (GPT-2, BERT); False: rotary (LLaMA)
    type_vocab_size: int = 0  # BERT's segment embeddings
    bias: bool = True  # biases in every Linear (GPT-2, BERT); LLaMA has none
    qkv_bias: bool = False  # biases on the Q, K and V projections only (Qwen 2)
    gated_ffn: bool = False  # SwiGLU feed-forward with three matrices (LLaMA)
    rms_norm: bool = False  # RMSNorm has a scale and no shift
    tied_embeddings: bool = True  # the output projection shares the token embedding table
    embedding_norm: bool = False  # LayerNorm after the embedding sum (BERT)
    final_norm: bool = True  # LayerNorm after the last block (pre-LN models)
    pooler: bool = False  # BERT's pooler (dense + tanh)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must be positive and divide n_heads={self.n_heads}")

    @property
    def kv_width(self) -> int:
        """Width of the keys (and of the values) one layer caches per token: n_kv_heads × head width."""
        return (self.n_kv_heads or self.n_heads) * (self.d_model // self.n_heads)

    def kv_cache_bytes(self, tokens: int = 1, dtype: str = "bf16") -> int:
        """Bytes of KV cache for `tokens` tokens (all sequences together): 2 · layers · kv_width · tokens values."""
        _check_positive(tokens, "tokens")
        if dtype not in BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(BYTES)}")
        return kv_cache_bytes(self.n_layers, 1, tokens, self.d_model, BYTES[dtype], n_heads=self.n_heads,
                              n_kv_heads=self.n_kv_heads or self.n_heads)

    @classmethod
    def from_config(cls, cfg: TransformerConfig, name: str = "ours", pooler: bool = False) -> "ArchSpec":
        """The spec of one of our models (GPT or encoder) from its config."""
        if cfg.n_experts:
            raise ValueError("ArchSpec describes dense models; count a mixture of experts with "
                             "transformer.parameter_breakdown")
        return cls(name, cfg.vocab_size, cfg.max_len, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff,
                   n_kv_heads=cfg.n_kv_heads, learned_positions=cfg.position == "learned",
                   type_vocab_size=cfg.type_vocab_size, bias=cfg.bias, gated_ffn=cfg.activation == "swiglu",
                   rms_norm=cfg.norm == "rms", tied_embeddings=cfg.tie_word_embeddings,
                   embedding_norm=cfg.embedding_norm, final_norm=cfg.norm_first, pooler=pooler)

    def parameters(self) -> dict[str, int]:
        """Parameter count by component: embeddings, attention, feed_forward, norms, head, and the total."""
        h, f, V, L = self.d_model, self.d_ff, self.vocab_size, self.n_layers
        norm = h if self.rms_norm else 2 * h
        bias = 1 if self.bias else 0
        emb = V * h + (self.max_len * h if self.learned_positions else 0) + self.type_vocab_size * h
        emb += norm if self.embedding_norm else 0
        k = self.kv_width
        attn = L * (2 * h * h + 2 * h * k + (h + 2 * k) * (1 if self.bias or self.qkv_bias else 0) + h * bias)
        ffn = L * (3 * h * f if self.gated_ffn else 2 * h * f + (f + h) * bias)
        norms = L * 2 * norm + (norm if self.final_norm else 0)
        head = (0 if self.tied_embeddings else V * h) + ((h * h + h) if self.pooler else 0)
        parts = {"embeddings": emb, "attention": attn, "feed_forward": ffn, "norms": norms, "head": head}
        parts["total"] = sum(parts.values())
        return parts

    def matmul_parameters(self) -> int:
        """N of the FLOP formulas: the block weight matrices plus the vocabulary projection (tied or not)."""
        h, f = self.d_model, self.d_ff
        attn = 2 * h * h + 2 * h * self.kv_width
        return self.n_layers * (attn + (3 if self.gated_ffn else 2) * h * f) + self.vocab_size * h


# Published architectures (sizes from their papers / Hugging Face configs).
REFERENCE_MODELS: dict[str, ArchSpec] = {
    "GPT-2 124M": ArchSpec("GPT-2 124M", 50257, 1024, 768, 12, 12, 3072),
    "BERT-base": ArchSpec("BERT-base", 30522, 512, 768, 12, 12, 3072, type_vocab_size=2, embedding_norm=True,
                          final_norm=False, pooler=True),
    "LLaMA-7B": ArchSpec("LLaMA-7B", 32000, 2048, 4096, 32, 32, 11008, learned_positions=False, bias=False,
                         gated_ffn=True, rms_norm=True, tied_embeddings=False),
    "GPT-3 175B": ArchSpec("GPT-3 175B", 50257, 2048, 12288, 96, 96, 49152),
}

# Today's open-weight decoders, all with grouped-query attention: 8 key/value heads for 32 (Llama 3 8B) or
# 64 (70B) query heads; Qwen 2.5 7B: 4 for 28 (sizes from their Hugging Face config.json files).
OPEN_WEIGHT_MODELS: dict[str, ArchSpec] = {
    "Llama-3-8B": ArchSpec("Llama-3-8B", 128256, 8192, 4096, 32, 32, 14336, n_kv_heads=8, learned_positions=False,
                           bias=False, gated_ffn=True, rms_norm=True, tied_embeddings=False),
    "Llama-3-70B": ArchSpec("Llama-3-70B", 128256, 8192, 8192, 80, 64, 28672, n_kv_heads=8,
                            learned_positions=False, bias=False, gated_ffn=True, rms_norm=True,
                            tied_embeddings=False),
    "Qwen2.5-7B": ArchSpec("Qwen2.5-7B", 152064, 32768, 3584, 28, 28, 18944, n_kv_heads=4, learned_positions=False,
                           bias=False, qkv_bias=True, gated_ffn=True, rms_norm=True, tied_embeddings=False),
}


def reference_model(name: str) -> ArchSpec:
    """One of REFERENCE_MODELS or OPEN_WEIGHT_MODELS by name."""
    known = {**REFERENCE_MODELS, **OPEN_WEIGHT_MODELS}
    if name not in known:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(known)}")
    return known[name]


def training_state_bytes(n_params: int, precision: str = "fp32") -> dict[str, int]:
    """Bytes of weights, gradients and AdamW state for training in fp32 or mixed precision ('bf16'/'fp16')."""
    _check_positive(n_params, "n_params")
    if precision == "fp32":
        parts = {"weights": 4 * n_params, "gradients": 4 * n_params, "optimizer": 8 * n_params}
    elif precision in ("bf16", "fp16"):  # 16-bit weights and gradients, fp32 master weights + two moments
        parts = {"weights": 2 * n_params, "gradients": 2 * n_params, "optimizer": 12 * n_params}
    else:
        raise ValueError(f"unknown precision {precision!r}; expected 'fp32', 'bf16' or 'fp16'")
    parts["total"] = sum(parts.values())
    return parts


def inference_weight_bytes(n_params: int, dtype: str = "fp16") -> int:
    """Bytes the weights alone take in `dtype` (fp32, bf16, fp16, int8)."""
    _check_positive(n_params, "n_params")
    if dtype not in BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(BYTES)}")
    return BYTES[dtype] * n_params


def activation_bytes(spec: ArchSpec, batch: int, seq_len: int, fused_attention: bool = False) -> int:
    """Activation bytes kept for backward in 16-bit training (Korthikanti: s·b·h·(34 + 5·a·s/h) per layer)."""
    _check_positive(batch, "batch")
    _check_positive(seq_len, "seq_len")
    s, b, h, a = seq_len, batch, spec.d_model, spec.n_heads
    per_layer = 34 * s * b * h + (0 if fused_attention else 5 * a * s * s * b)
    return spec.n_layers * per_layer


def flops_per_token(spec: ArchSpec, seq_len: int, training: bool = True) -> int:
    """FLOPs per token: forward 2·N + 4·L·s·h; training (forward + backward) three times that."""
    _check_positive(seq_len, "seq_len")
    forward = 2 * spec.matmul_parameters() + 4 * spec.n_layers * seq_len * spec.d_model
    return 3 * forward if training else forward


def _check_positive(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# ---------------------------------------------------------------- measured

def _forward_loss(model: nn.Module, batch: dict, bf16: bool = False) -> Tensor:
    device = next(model.parameters()).device
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise ValueError("the model returned no loss: pass labels in the batch")
    return out.loss


def saved_activation_bytes(model: nn.Module, batch: dict, bf16: bool = False) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (parameters excluded; exact).

    Counted with torch.autograd.graph.saved_tensors_hooks, each storage once; with non-reentrant activation
    checkpointing this counts the checkpointed blocks' inputs (saved through the hooks) and nothing inside them.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _forward_loss(model, batch, bf16)
    del loss
    return sum(storages.values())


def peak_training_memory(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer | None = None,
                         bf16: bool = False) -> dict[str, int]:
    """Peak bytes of one training step (forward, backward, optimizer step), by kind, measured by torch's MemTracker.

    Keys: parameters, gradients, activations, temporary, optimizer, total (bytes at the peak of the step).
    Run it twice with the same optimizer to include the optimizer state (Adam creates it in its first step).
    """
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    tracker = MemTracker()
    tracker.track_external(model, *([optimizer] if optimizer is not None else []))
    with tracker:
        loss = _forward_loss(model, batch, bf16)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
    snapshot = tracker.get_tracker_snapshot("peak")
    device = next(model.parameters()).device
    stats = snapshot.get(device) or next(iter(snapshot.values()))
    names = {_MemRefType.PARAM: "parameters", _MemRefType.GRAD: "gradients", _MemRefType.ACT: "activations",
             _MemRefType.TEMP: "temporary", _MemRefType.OPT: "optimizer"}
    out = {name: int(stats.get(kind, 0)) for kind, name in names.items()}
    out["total"] = int(stats["Total"])
    return out


def measured_flops(model: nn.Module, batch: dict, training: bool = True) -> int:
    """FLOPs of one forward (and backward when training) pass, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if training:
            _forward_loss(model, batch).backward()
        else:
            with torch.no_grad():
                model(**batch)
    if training:
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())
