"""Transformer building blocks and models: a BERT-style encoder and a decoder-only GPT, with task heads.

The same blocks build today's open-weight decoders (Llama, Qwen): `LlamaConfig` switches to RMSNorm, a SwiGLU
feed-forward, rotary positions, grouped-query attention and no biases; `n_experts` swaps the feed-forward for a
mixture of experts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import KVCache, MultiHeadAttention
from .positional import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding

ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU,
               "silu": nn.SiLU}
GATED = {"swiglu": "silu"}  # gated feed-forwards: name -> the activation applied to the gate
POSITIONS = ("learned", "sinusoidal", "rotary")
NORMS = ("layer", "rms")


@dataclass
class TransformerConfig:
    """Sizes and choices shared by every model in the package."""

    vocab_size: int
    max_len: int = 512
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    n_kv_heads: int | None = None  # key/value heads; defaults to n_heads (fewer: grouped-query attention)
    d_ff: int | None = None  # defaults to 4 * d_model
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation: str = "gelu"
    norm_first: bool = True  # pre-LN (GPT-2) when True, post-LN (original Transformer, BERT) when False
    layer_norm_eps: float = 1e-5
    position: str = "learned"
    type_vocab_size: int = 0  # segment embeddings (BERT uses 2)
    embedding_norm: bool = False  # LayerNorm after the embedding sum (BERT)
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    num_labels: int = 2
    fused_attention: bool = True
    norm: str = "layer"  # "layer": LayerNorm; "rms": RMSNorm (Llama)
    bias: bool = True  # biases in the attention and feed-forward Linear layers (Llama has none)
    rope_base: float = 10000.0  # θ of rotary positions
    n_experts: int = 0  # > 0: every feed-forward is a mixture of this many experts
    experts_per_token: int = 2  # top-k experts the router picks for each token
    router_aux_coef: float = 0.01  # weight of the load-balancing loss added to the LM loss

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_kv_heads", "n_layers", "d_ff", "num_labels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS and self.activation not in GATED:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of "
                             f"{sorted([*ACTIVATIONS, *GATED])}")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position encoding {self.position!r}; expected one of {POSITIONS}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.experts_per_token <= self.n_experts):
            raise ValueError(f"a mixture of experts needs 1 <= experts_per_token <= n_experts, got "
                             f"experts_per_token={self.experts_per_token}, n_experts={self.n_experts}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout} and {self.attn_dropout}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        """Build a config from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class EncoderConfig(TransformerConfig):
    """BERT-style defaults: post-LN, exact GELU, segment embeddings, LayerNorm on embeddings."""

    norm_first: bool = False
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    embedding_norm: bool = True


@dataclass
class GPTConfig(TransformerConfig):
    """GPT-2-style defaults: pre-LN, tanh-approximated GELU, tied LM head."""

    activation: str = "gelu_tanh"


@dataclass
class LlamaConfig(TransformerConfig):
    """Llama-style defaults: RMSNorm, SwiGLU, rotary positions, no biases, no dropout, untied output projection.

    Set `n_kv_heads` below `n_heads` for grouped-query attention (Llama 2 70B, Llama 3, Qwen 2).
    """

    activation: str = "swiglu"
    norm: str = "rms"
    position: str = "rotary"
    bias: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False


def make_norm(cfg: TransformerConfig) -> nn.Module:
    """The normalisation layer the config asks for: LayerNorm, or RMSNorm (a scale, no mean, no shift)."""
    if cfg.norm == "rms":
        return nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)


@dataclass
class ModelOutput:
    """What a model returns; fields a model does not compute stay None."""

    last_hidden_state: Tensor | None = None
    logits: Tensor | None = None
    loss: Tensor | None = None
    pooled: Tensor | None = None
    attentions: list[Tensor] | None = None
    nsp_logits: Tensor | None = None
    aux_loss: Tensor | None = None  # mixture of experts: the load-balancing loss summed over layers


class Embeddings(nn.Module):
    """Token embedding + position encoding (+ segment embedding, + LayerNorm), then dropout."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position: nn.Module | None = None
        if cfg.position == "learned":
            self.position = LearnedPositionalEmbedding(cfg.max_len, cfg.d_model)
        elif cfg.position == "sinusoidal":
            self.position = SinusoidalPositionalEncoding(cfg.max_len, cfg.d_model)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None, offset: int | Tensor = 0) -> Tensor:
        """Embed (B, T) token ids whose first token sits at position `offset` (an int, or a (B,) tensor of
        per-sequence offsets).

        The one place a forward pass validates its ids: input_ids and any given token_type_ids are
        range-checked together, with one device sync.
        """
        ids_to_check = [(input_ids, self.cfg.vocab_size, "input_ids")]
        if self.token_type is not None and token_type_ids is not None:
            ids_to_check.append((token_type_ids, self.cfg.type_vocab_size, "token_type_ids"))
        _check_id_tensors(ids_to_check)
        if self.token_type is not None and token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids has shape {tuple(token_type_ids.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        T = input_ids.shape[1]
        last = int(offset.max()) if isinstance(offset, Tensor) and offset.numel() else offset
        if isinstance(last, int) and last + T > self.cfg.max_len:
            raise ValueError(
                f"sequence of {last + T} tokens is longer than max_len={self.cfg.max_len} "
                f"(the position table)"
            )
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(T, offset)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)  # segment 0 everywhere: valid, nothing to check
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)


def check_token_ids(ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """Raise ValueError unless `ids` is a (batch, length) integer tensor with values in [0, vocab_size)."""
    _check_id_tensors([(ids, vocab_size, name)])


def _check_id_tensors(checks: list[tuple[Tensor, int, str]]) -> None:
    """Check each (ids, vocab_size, name) like `check_token_ids`, reading all min/max values in one device sync."""
    for ids, _, name in checks:
        if not isinstance(ids, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor (torch.long), got {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}")
    checks = [c for c in checks if c[0].numel()]
    if not checks:
        return
    device = checks[0][0].device
    bounds = torch.cat([torch.stack(torch.aminmax(ids)).to(device, torch.long) for ids, _, _ in checks]).tolist()
    for i, (_, vocab_size, name) in enumerate(checks):
        low, high = bounds[2 * i], bounds[2 * i + 1]
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} values must lie in [0, {vocab_size}), got min={low}, max={high}")


def _check_attention_mask(mask: Tensor | None, batch: int, length: int) -> None:
    if mask is not None and (mask.dim() != 2 or tuple(mask.shape) != (batch, length)):
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}; expected (batch={batch}, length={length})"
        )


class FeedForward(nn.Module):
    """Position-wise feed-forward network: Linear(d, d_ff) → activation → Linear(d_ff, d) → dropout."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]()
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the same two-layer MLP at every position."""
        return self.drop(self.fc2(self.act(self.fc1(x))))

    def residual_projections(self) -> list[nn.Linear]:
        """The layers that write into the residual stream (GPT-2 scales their initialisation)."""
        return [self.fc2]


class GatedFeedForward(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020; Llama): down(silu(gate(x)) * up(x)) → dropout, three matrices."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.act = ACTIVATIONS[GATED[cfg.activation]]()
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """The gate decides, per hidden unit, how much of the `up` projection passes."""
        return self.drop(self.down(self.act(self.gate(x)) * self.up(x)))

    def residual_projections(self) -> list[nn.Linear]:
        """The layers that write into the residual stream."""
        return [self.down]


def dense_feed_forward(cfg: TransformerConfig) -> nn.Module:
    """One feed-forward network of the kind the config's activation names (gated or not)."""
    return GatedFeedForward(cfg) if cfg.activation in GATED else FeedForward(cfg)


class MoEFeedForward(nn.Module):
    """Mixture-of-experts feed-forward (Switch Transformer, Mixtral): a router sends each token to its top-k experts.

    The router scores every expert; each token goes to the `experts_per_token` best, and their outputs are mixed
    with the softmax of those k scores (Mixtral's order: top-k, then softmax). Only the chosen experts run, so a
    token uses k/n_experts of the feed-forward parameters. After each forward `aux_loss` holds the Switch
    Transformer's load-balancing loss n_experts · Σ_i f_i · P_i (f_i: share of token slots routed to expert i,
    P_i: mean router probability of expert i); it is 1 when the load is perfectly even.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_experts, self.k = cfg.n_experts, cfg.experts_per_token
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(dense_feed_forward(cfg) for _ in range(cfg.n_experts))
        self.aux_loss: Tensor | None = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router probabilities (N, E), chosen experts (N, k) and their mixing weights (N, k) for tokens x (N, d)."""
        logits = self.router(x)
        top, chosen = logits.topk(self.k, dim=-1)
        return logits.softmax(dim=-1), chosen, top.softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Run each token through its chosen experts only and mix their outputs."""
        flat = x.reshape(-1, x.shape[-1])
        probs, chosen, weights = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot].unsqueeze(-1))
        routed = F.one_hot(chosen, self.n_experts).sum(dim=1).float()  # (N, E): 1 where the token went
        self.aux_loss = self.n_experts * (routed.mean(dim=0) / self.k * probs.mean(dim=0)).sum()
        return out.view_as(x)

    def residual_projections(self) -> list[nn.Linear]:
        """Every expert's output projection."""
        return [p for expert in self.experts for p in expert.residual_projections()]


class TransformerBlock(nn.Module):
    """Multi-head self-attention and feed-forward, each wrapped in a residual connection and LayerNorm.

    pre-LN:  x = x + Attn(LN(x));  x = x + FFN(LN(x))
    post-LN: x = LN(x + Attn(x));  x = LN(x + FFN(x))
    """

    def __init__(self, cfg: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        self.norm_first, self.causal = cfg.norm_first, causal
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_len, cfg.rope_base) if cfg.position == "rotary" else None
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, cfg.attn_dropout, bias=cfg.bias, fused=cfg.fused_attention, rotary=rotary,
            n_kv_heads=cfg.n_kv_heads,
        )
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.norm1 = make_norm(cfg)
        self.ffn = MoEFeedForward(cfg) if cfg.n_experts else dense_feed_forward(cfg)
        self.norm2 = make_norm(cfg)

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Transform x (B, T, d); padding_mask (B, past + T) is True/1 at real tokens. Returns (x, weights or None)."""
        def attend(h: Tensor) -> tuple[Tensor, Tensor | None]:
            out, w = self.attn(
                h, padding_mask=padding_mask, is_causal=self.causal,
                kv_cache=kv_cache, return_weights=return_weights,
            )
            return self.attn_drop(out), w

        if self.norm_first:
            a, w = attend(self.norm1(x))
            x = x + a
            x = x + self.ffn(self.norm2(x))
        else:
            a, w = attend(x)
            x = self.norm1(x + a)
            x = self.norm2(x + self.ffn(x))
        return x, w


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm/RMSNorm scale."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class TransformerStack(nn.Module):
    """Embeddings followed by n_layers blocks (and a final LayerNorm for pre-LN models).

    With `gradient_checkpointing` on (see `set_gradient_checkpointing`), training forward passes keep only each
    block's input and recompute the block's activations during backward (torch.utils.checkpoint, non-reentrant).
    """

    def __init__(self, cfg: TransformerConfig, causal: bool) -> None:
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.gradient_checkpointing = False
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(TransformerBlock(cfg, causal) for _ in range(cfg.n_layers))
        self.final_norm = make_norm(cfg) if cfg.norm_first else None

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache, one entry per layer, for incremental decoding."""
        return [KVCache() for _ in self.layers]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        kv_cache: list[KVCache] | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """Hidden states (B, T, d) for token ids (B, T); attention_mask (B, past + T) marks real tokens.

        kv_cache: one cache per layer (`attention.KVCache`, or any object with its `offset`, `update` and
        `key_mask`, such as the serving engine's per-sequence slots, whose offsets differ row by row).
        """
        past: int | Tensor = 0
        if kv_cache is not None:
            if not self.causal:
                raise ValueError("a KV cache only makes sense for a causal (decoder) model")
            if len(kv_cache) != len(self.layers):
                raise ValueError(f"kv_cache has {len(kv_cache)} entries, the model {len(self.layers)} layers")
            past = kv_cache[0].offset
        x = self.embeddings(input_ids, token_type_ids, offset=past)  # validates input_ids (once per forward)
        B, T = input_ids.shape
        if attention_mask is not None and isinstance(past, Tensor):
            raise ValueError("an attention_mask cannot be combined with per-sequence cache offsets; the cache "
                             "masks each sequence's keys itself")
        _check_attention_mask(attention_mask, B, past + T)
        attentions = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, layer in enumerate(self.layers):
            cache = None if kv_cache is None else kv_cache[i]
            if recompute:
                x, w = checkpoint(
                    layer, x, padding_mask=attention_mask, return_weights=return_attention, use_reentrant=False
                )
            else:
                x, w = layer(x, padding_mask=attention_mask, kv_cache=cache, return_weights=return_attention)
            attentions.append(w)
        if self.final_norm is not None:
            x = self.final_norm(x)
        aux = [layer.ffn.aux_loss for layer in self.layers if isinstance(layer.ffn, MoEFeedForward)]
        return ModelOutput(last_hidden_state=x, attentions=attentions if return_attention else None,
                           aux_loss=sum(aux) if aux else None)


def classification_loss(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    """Cross-entropy of (B, C) logits against (B,) integer labels, or None without labels."""
    if labels is None:
        return None
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    return F.cross_entropy(logits, labels)


class TransformerEncoder(nn.Module):
    """A BERT-style bidirectional encoder, optionally with a pooler (dense + tanh on [CLS])."""

    def __init__(self, cfg: TransformerConfig, add_pooler: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.stack = TransformerStack(cfg, causal=False)
        self.pooler = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.Tanh()) if add_pooler else None
        self.apply(init_weights)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """Contextual vectors for every token, and the pooled [CLS] vector when there is a pooler."""
        out = self.stack(input_ids, attention_mask, token_type_ids, return_attention=return_attention)
        if self.pooler is not None:
            out.pooled = self.pooler(out.last_hidden_state[:, 0])
        return out


def _check_token_labels(logits: Tensor, labels: Tensor) -> None:
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(logits.shape[:2])}")


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (B, T, vocab) logits against (B, T) labels, skipping positions labelled -100."""
    _check_token_labels(logits, labels)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense → activation → LayerNorm → vocabulary projection (tied) + bias."""

    def __init__(self, cfg: TransformerConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[GATED.get(cfg.activation, cfg.activation)]()
        self.norm = make_norm(cfg)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            self.decoder.weight = word_embeddings.weight

    def forward(self, h: Tensor) -> Tensor:
        """Vocabulary logits for each position."""
        return self.decoder(self.norm(self.act(self.dense(h))))


class EncoderForMaskedLM(nn.Module):
    """Encoder + MLM head; loss is cross-entropy over positions whose label is not -100."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TransformerEncoder(cfg, add_pooler=False)
        self.mlm_head = MaskedLMHead(cfg, self.encoder.stack.embeddings.word)
        self.mlm_head.apply(init_weights)
        nn.init.zeros_(self.mlm_head.decoder.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, return_attention=False):
        """Logits (B, T, vocab) and, given labels (B, T), the masked-LM loss."""
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_attention)
        out.logits = self.mlm_head(out.last_hidden_state)
        if labels is not None:
            out.loss = masked_lm_loss(out.logits, labels)
        return out


class EncoderForPreTraining(nn.Module):
    """Encoder + MLM head + next-sentence-prediction head (BertForPreTraining layout); loss = MLM + NSP."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TransformerEncoder(cfg, add_pooler=True)
        self.mlm_head = MaskedLMHead(cfg, self.encoder.stack.embeddings.word)
        self.nsp_head = nn.Linear(cfg.d_model, 2)
        self.mlm_head.apply(init_weights)
        init_weights(self.nsp_head)
        nn.init.zeros_(self.mlm_head.decoder.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                next_sentence_label=None, return_attention=False):
        """MLM logits (B, T, vocab), NSP logits (B, 2) and, given labels, the summed loss."""
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_attention)
        out.logits = self.mlm_head(out.last_hidden_state)
        out.nsp_logits = self.nsp_head(out.pooled)
        losses = []
        if labels is not None:
            losses.append(masked_lm_loss(out.logits, labels))
        if next_sentence_label is not None:
            losses.append(classification_loss(out.nsp_logits, next_sentence_label))
        out.loss = sum(losses) if losses else None
        return out


class EncoderForSequenceClassification(nn.Module):
    """Encoder + pooler + dropout + linear classifier (BertForSequenceClassification layout)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TransformerEncoder(cfg, add_pooler=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, cfg.num_labels)
        init_weights(self.classifier)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, return_attention=False):
        """Class logits (B, num_labels) and, given labels (B,), the cross-entropy loss."""
        out = self.encoder(input_ids, attention_mask, token_type_ids, return_attention)
        out.logits = self.classifier(self.drop(out.pooled))
        out.loss = classification_loss(out.logits, labels)
        return out


class GPT(nn.Module):
    """Decoder-only language model: causal Transformer stack + LM head tied to the token embeddings."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = TransformerStack(cfg, causal=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.transformer.embeddings.word.weight
        scaled_init_residual(self.transformer, cfg.n_layers)

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache for incremental decoding."""
        return self.transformer.new_cache()

    def forward(self, input_ids, attention_mask=None, kv_cache=None, labels=None, return_attention=False):
        """Next-token logits (B, T, vocab); given labels (B, T), the shifted causal-LM loss (-100 ignored)."""
        out = self.transformer(input_ids, attention_mask, kv_cache=kv_cache, return_attention=return_attention)
        out.logits = self.lm_head(out.last_hidden_state)
        if labels is not None:
            _check_token_labels(out.logits, labels)
            # shift the labels rather than the logits: no copy of the (B, T, vocab) tensor
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
            out.loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            if out.aux_loss is not None:
                out.loss = out.loss + self.cfg.router_aux_coef * out.aux_loss
        return out


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing on or off in every Transformer stack of `model`; returns how many stacks."""
    stacks = [m for m in model.modules() if isinstance(m, TransformerStack)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} contains no TransformerStack to checkpoint")
    for stack in stacks:
        stack.gradient_checkpointing = bool(enabled)
    return len(stacks)


def scaled_init_residual(stack: TransformerStack, n_layers: int, std: float = 0.02) -> None:
    """GPT-2's scaled initialisation of the projections that write into the residual stream."""
    for layer in stack.layers:
        for proj in [layer.attn.out_proj, *layer.ffn.residual_projections()]:
            nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * n_layers))


class GPTForSequenceClassification(nn.Module):
    """Causal stack + linear score on the hidden state of each sequence's last real token."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = TransformerStack(cfg, causal=True)
        self.score = nn.Linear(cfg.d_model, cfg.num_labels, bias=False)
        self.apply(init_weights)
        scaled_init_residual(self.transformer, cfg.n_layers)

    def forward(self, input_ids, attention_mask=None, labels=None, return_attention=False):
        """Class logits (B, num_labels) read at the last token where attention_mask is 1 (right padding)."""
        out = self.transformer(input_ids, attention_mask, return_attention=return_attention)
        h = out.last_hidden_state
        if attention_mask is None:
            last = torch.full((h.shape[0],), h.shape[1] - 1, device=h.device)
        else:
            last = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        out.pooled = h[torch.arange(h.shape[0], device=h.device), last]
        out.logits = self.score(out.pooled)
        out.loss = classification_loss(out.logits, labels)
        return out


def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Average of the hidden states (B, T, d) over real tokens (attention_mask 1), shape (B, d)."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be (batch, length, width), got {tuple(hidden.shape)}")
    if attention_mask is None:
        return hidden.mean(dim=1)
    _check_attention_mask(attention_mask, hidden.shape[0], hidden.shape[1])
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def parameter_breakdown(cfg: TransformerConfig, pooler: bool = False, lm_head: bool = True) -> dict[str, int]:
    """Parameter count by component, computed from the config alone (no weights allocated).

    Counts an encoder (embedding LayerNorm) or a GPT (final LayerNorm) as the config says;
    `pooler` adds BERT's pooler, `lm_head` adds an untied output projection when weights are not tied.
    """
    d, f, V, b = cfg.d_model, cfg.d_ff, cfg.vocab_size, int(cfg.bias)
    kv = cfg.n_kv_heads * cfg.head_dim
    norm = d if cfg.norm == "rms" else 2 * d
    emb = V * d + (cfg.max_len * d if cfg.position == "learned" else 0) + cfg.type_vocab_size * d
    emb += norm if cfg.embedding_norm else 0
    attn = cfg.n_layers * (2 * d * d + 2 * d * kv + (2 * d + 2 * kv) * b)
    one_ffn = 3 * d * f + (2 * f + d) * b if cfg.activation in GATED else 2 * d * f + (f + d) * b
    ffn = cfg.n_layers * (max(cfg.n_experts, 1) * one_ffn + cfg.n_experts * d)
    norms = cfg.n_layers * 2 * norm + (norm if cfg.norm_first else 0)
    heads = (d * d + d if pooler else 0) + (V * d if lm_head and not cfg.tie_word_embeddings else 0)
    parts = {"embeddings": emb, "attention": attn, "feed_forward": ffn, "layer_norm": norms, "heads": heads}
    parts["total"] = sum(parts.values())
    return parts


def active_parameters(cfg: TransformerConfig, pooler: bool = False, lm_head: bool = True) -> int:
    """Parameters one token's forward pass uses: with a mixture of experts, only `experts_per_token` of the
    `n_experts` feed-forward networks of each layer (plus the router); without, all of them."""
    total = parameter_breakdown(cfg, pooler, lm_head)["total"]
    if not cfg.n_experts:
        return total
    d, f, b = cfg.d_model, cfg.d_ff, int(cfg.bias)
    one_ffn = 3 * d * f + (2 * f + d) * b if cfg.activation in GATED else 2 * d * f + (f + d) * b
    return total - cfg.n_layers * (cfg.n_experts - cfg.experts_per_token) * one_ffn
