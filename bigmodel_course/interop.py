"""Weight conversion between this package's models and Hugging Face `transformers` (GPT-2, BERT, Llama, ViT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .transformer import (
    GPT,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForPreTraining,
    GPTConfig,
    GPTForSequenceClassification,
    LlamaConfig,
    TransformerConfig,
    TransformerEncoder,
)

_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_OUR_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _activation_from_hf(name: str) -> str:
    if name not in _HF_ACT:
        raise ValueError(f"unsupported Hugging Face activation {name!r}; supported: {sorted(_HF_ACT)}")
    return _HF_ACT[name]


def _load_exact(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Load `state` into `module`, failing with the names of missing or unexpected tensors."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    own = {k for k, _ in module.named_buffers()}
    missing = [k for k in missing if k not in own]
    if missing or unexpected:
        raise ValueError(f"cannot convert {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _check_classic_blocks(cfg: TransformerConfig, target: str) -> None:
    """GPT-2 and BERT blocks: LayerNorm, an ungated MLP, biases, one key/value head per query head, no experts."""
    if cfg.norm != "layer" or cfg.activation not in _OUR_ACT or not cfg.bias or cfg.n_kv_heads != cfg.n_heads \
            or cfg.n_experts:
        raise ValueError(f"{target} blocks have LayerNorm, a {'/'.join(_OUR_ACT)} MLP, biases, as many key/value "
                         "heads as query heads and no experts; convert Llama-style models with llama_to_hf")


# ---------------------------------------------------------------- GPT-2


def gpt_config_from_hf(hf_config) -> GPTConfig:
    """Our GPTConfig equivalent of a `transformers.GPT2Config`."""
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or getattr(
        hf_config, "reorder_and_upcast_attn", False
    ):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn "
                         "are not supported")
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        max_len=hf_config.n_positions,
        d_model=hf_config.n_embd,
        n_heads=hf_config.n_head,
        n_layers=hf_config.n_layer,
        d_ff=hf_config.n_inner or 4 * hf_config.n_embd,
        dropout=hf_config.resid_pdrop,
        attn_dropout=hf_config.attn_pdrop,
        activation=_activation_from_hf(hf_config.activation_function),
        layer_norm_eps=hf_config.layer_norm_epsilon,
        tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
    )


def gpt_config_to_hf(cfg: TransformerConfig):
    """A `transformers.GPT2Config` with the same sizes as our config."""
    from transformers import GPT2Config

    if cfg.position != "learned" or not cfg.norm_first or cfg.type_vocab_size or cfg.embedding_norm:
        raise ValueError("only pre-LN GPTs with learned positions and no segment embeddings map to GPT-2")
    _check_classic_blocks(cfg, "GPT-2")
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function=_OUR_ACT[cfg.activation],
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attn_dropout,
        layer_norm_epsilon=cfg.layer_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=None, eos_token_id=None,
    )


def _gpt_pairs(n_layers: int) -> list[tuple[str, str, bool]]:
    """(our key, GPT-2 key, transpose?) pairs; GPT-2's Conv1D stores weights as (in, out)."""
    pairs = [
        ("transformer.embeddings.word.weight", "transformer.wte.weight", False),
        ("transformer.embeddings.position.embedding.weight", "transformer.wpe.weight", False),
        ("transformer.final_norm.weight", "transformer.ln_f.weight", False),
        ("transformer.final_norm.bias", "transformer.ln_f.bias", False),
    ]
    for i in range(n_layers):
        ours, hf = f"transformer.layers.{i}.", f"transformer.h.{i}."
        for o, h in [("norm1", "ln_1"), ("norm2", "ln_2")]:
            pairs += [(ours + o + ".weight", hf + h + ".weight", False), (ours + o + ".bias", hf + h + ".bias", False)]
        for o, h in [("attn.in_proj", "attn.c_attn"), ("attn.out_proj", "attn.c_proj"),
                     ("ffn.fc1", "mlp.c_fc"), ("ffn.fc2", "mlp.c_proj")]:
            pairs += [(ours + o + ".weight", hf + h + ".weight", True), (ours + o + ".bias", hf + h + ".bias", False)]
    return pairs


def gpt_from_hf(hf_model) -> GPT:
    """Our GPT with the weights of a `transformers.GPT2LMHeadModel`."""
    cfg = gpt_config_from_hf(hf_model.config)
    model = GPT(cfg)
    src = hf_model.state_dict()
    state = {o: (src[h].t() if t else src[h]).clone() for o, h, t in _gpt_pairs(cfg.n_layers)}
    state["lm_head.weight"] = src["lm_head.weight"].clone() if not cfg.tie_word_embeddings else state[
        "transformer.embeddings.word.weight"]
    _load_exact(model, state, "GPT2LMHeadModel")
    return model


def gpt_to_hf(model: GPT):
    """A `transformers.GPT2LMHeadModel` with the weights of our GPT."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt_config_to_hf(model.cfg))
    src = model.state_dict()
    state = {h: (src[o].t() if t else src[o]).contiguous().clone() for o, h, t in _gpt_pairs(model.cfg.n_layers)}
    state["lm_head.weight"] = src["lm_head.weight"].clone()
    _load_exact(hf, state, "GPT to GPT2LMHeadModel")
    hf.eval()
    return hf


def gpt_classifier_to_hf(model: GPTForSequenceClassification):
    """A `transformers.GPT2ForSequenceClassification` with the weights of our GPT classifier.

    GPT-2 reads each sequence at its last token that is not `pad_token_id`; with right padding and no pad
    token inside the text that is the same position our classifier reads from the attention mask.
    """
    from transformers import GPT2ForSequenceClassification

    cfg = gpt_config_to_hf(model.cfg)
    cfg.num_labels, cfg.pad_token_id = model.cfg.num_labels, model.cfg.pad_token_id
    hf = GPT2ForSequenceClassification(cfg)
    src = model.state_dict()
    state = {h: (src[o].t() if t else src[o]).contiguous().clone() for o, h, t in _gpt_pairs(model.cfg.n_layers)}
    state["score.weight"] = src["score.weight"].clone()
    _load_exact(hf, state, "GPT classifier to GPT2ForSequenceClassification")
    hf.eval()
    return hf


def gpt_classifier_from_hf(hf_model) -> GPTForSequenceClassification:
    """Our GPT classifier with the weights of a `transformers.GPT2ForSequenceClassification`."""
    if hf_model.config.pad_token_id is None:
        raise ValueError("the GPT2ForSequenceClassification has no pad_token_id, so its read-out position is undefined")
    base = gpt_config_from_hf(hf_model.config)
    cfg = GPTConfig.from_dict({**base.to_dict(), "num_labels": hf_model.config.num_labels,
                               "pad_token_id": hf_model.config.pad_token_id})
    model = GPTForSequenceClassification(cfg)
    src = hf_model.state_dict()
    state = {o: (src[h].t() if t else src[h]).clone() for o, h, t in _gpt_pairs(cfg.n_layers)}
    state["score.weight"] = src["score.weight"].clone()
    _load_exact(model, state, "GPT2ForSequenceClassification")
    return model


# ---------------------------------------------------------------- BERT


def encoder_config_from_hf(hf_config) -> EncoderConfig:
    """Our EncoderConfig equivalent of a `transformers.BertConfig`."""
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT models with absolute position embeddings are supported")
    return EncoderConfig(
        vocab_size=hf_config.vocab_size,
        max_len=hf_config.max_position_embeddings,
        d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads,
        n_layers=hf_config.num_hidden_layers,
        d_ff=hf_config.intermediate_size,
        dropout=hf_config.hidden_dropout_prob,
        attn_dropout=hf_config.attention_probs_dropout_prob,
        activation=_activation_from_hf(hf_config.hidden_act),
        layer_norm_eps=hf_config.layer_norm_eps,
        type_vocab_size=hf_config.type_vocab_size,
        pad_token_id=hf_config.pad_token_id or 0,
    )


def encoder_config_to_hf(cfg: TransformerConfig):
    """A `transformers.BertConfig` with the same sizes as our config."""
    from transformers import BertConfig

    if cfg.position != "learned" or cfg.norm_first or not cfg.embedding_norm or not cfg.type_vocab_size:
        raise ValueError("only post-LN encoders with learned positions and segment embeddings map to BERT")
    _check_classic_blocks(cfg, "BERT")
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff, hidden_act=_OUR_ACT[cfg.activation],
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
        max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def _bert_pairs(n_layers: int, ours: str, hf: str, pooler: bool) -> list[tuple[str, str]]:
    """(our key, BERT key) pairs for everything but the fused Q/K/V projection."""
    e = hf + "embeddings."
    pairs = [
        (ours + "stack.embeddings.word.weight", e + "word_embeddings.weight"),
        (ours + "stack.embeddings.position.embedding.weight", e + "position_embeddings.weight"),
        (ours + "stack.embeddings.token_type.weight", e + "token_type_embeddings.weight"),
        (ours + "stack.embeddings.norm.weight", e + "LayerNorm.weight"),
        (ours + "stack.embeddings.norm.bias", e + "LayerNorm.bias"),
    ]
    for i in range(n_layers):
        o, h = f"{ours}stack.layers.{i}.", f"{hf}encoder.layer.{i}."
        for a, b in [("attn.out_proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
                     ("ffn.fc1", "intermediate.dense"), ("ffn.fc2", "output.dense"), ("norm2", "output.LayerNorm")]:
            pairs += [(o + a + ".weight", h + b + ".weight"), (o + a + ".bias", h + b + ".bias")]
    if pooler:
        pairs += [(ours + "pooler.0.weight", hf + "pooler.dense.weight"),
                  (ours + "pooler.0.bias", hf + "pooler.dense.bias")]
    return pairs


_NSP_PAIRS = [("nsp_head.weight", "cls.seq_relationship.weight"), ("nsp_head.bias", "cls.seq_relationship.bias")]
_MLM_PAIRS = [
    ("mlm_head.dense.weight", "cls.predictions.transform.dense.weight"),
    ("mlm_head.dense.bias", "cls.predictions.transform.dense.bias"),
    ("mlm_head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("mlm_head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("mlm_head.decoder.bias", "cls.predictions.bias"),
]


def _bert_to_ours(src: dict, n_layers: int, ours: str, hf: str, pooler: bool) -> dict[str, Tensor]:
    state = {o: src[h].clone() for o, h in _bert_pairs(n_layers, ours, hf, pooler)}
    for i in range(n_layers):
        s = f"{hf}encoder.layer.{i}.attention.self."
        o = f"{ours}stack.layers.{i}.attn.in_proj."
        for p in ("weight", "bias"):
            state[o + p] = torch.cat([src[s + n + "." + p] for n in ("query", "key", "value")]).clone()
    return state


def _ours_to_bert(src: dict, n_layers: int, ours: str, hf: str, pooler: bool) -> dict[str, Tensor]:
    state = {h: src[o].clone() for o, h in _bert_pairs(n_layers, ours, hf, pooler)}
    for i in range(n_layers):
        s = f"{hf}encoder.layer.{i}.attention.self."
        o = f"{ours}stack.layers.{i}.attn.in_proj."
        for p in ("weight", "bias"):
            for n, t in zip(("query", "key", "value"), src[o + p].chunk(3)):
                state[s + n + "." + p] = t.clone()
    return state


_HF_ENCODERS = ("BertModel", "BertForMaskedLM", "BertForPreTraining")


def encoder_from_hf(hf_model) -> TransformerEncoder | EncoderForMaskedLM | EncoderForPreTraining:
    """Our encoder from a `transformers` BertModel, BertForMaskedLM or BertForPreTraining."""
    kind = type(hf_model).__name__
    if kind not in _HF_ENCODERS:
        raise ValueError(f"expected one of {', '.join(_HF_ENCODERS)}, got {kind}")
    cfg = encoder_config_from_hf(hf_model.config)
    src = hf_model.state_dict()
    n = cfg.n_layers
    if kind == "BertModel":
        pooler = getattr(hf_model, "pooler", None) is not None
        model = TransformerEncoder(cfg, add_pooler=pooler)
        state = _bert_to_ours(src, n, "", "", pooler)
    else:
        pretraining = kind == "BertForPreTraining"
        model = EncoderForPreTraining(cfg) if pretraining else EncoderForMaskedLM(cfg)
        state = _bert_to_ours(src, n, "encoder.", "bert.", pooler=pretraining)
        state.update({o: src[h].clone() for o, h in _MLM_PAIRS + (_NSP_PAIRS if pretraining else [])})
        state["mlm_head.decoder.weight"] = src["cls.predictions.decoder.weight"].clone()
    _load_exact(model, state, kind)
    return model.eval()


def _prelayernorm_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(our key, RobertaPreLayerNormForMaskedLM key) pairs for all but Q/K/V and the offset position table."""
    r, e = "roberta_prelayernorm.", "roberta_prelayernorm.embeddings."
    pairs = [("encoder.stack.embeddings.word.weight", e + "word_embeddings.weight"),
             ("encoder.stack.embeddings.token_type.weight", e + "token_type_embeddings.weight"),
             ("encoder.stack.embeddings.norm.weight", e + "LayerNorm.weight"),
             ("encoder.stack.embeddings.norm.bias", e + "LayerNorm.bias"),
             ("encoder.stack.final_norm.weight", r + "LayerNorm.weight"),
             ("encoder.stack.final_norm.bias", r + "LayerNorm.bias"),
             ("mlm_head.dense.weight", "lm_head.dense.weight"), ("mlm_head.dense.bias", "lm_head.dense.bias"),
             ("mlm_head.norm.weight", "lm_head.layer_norm.weight"), ("mlm_head.norm.bias", "lm_head.layer_norm.bias"),
             ("mlm_head.decoder.weight", "lm_head.decoder.weight"), ("mlm_head.decoder.bias", "lm_head.decoder.bias"),
             ("mlm_head.decoder.bias", "lm_head.bias")]
    for i in range(n_layers):
        o, h = f"encoder.stack.layers.{i}.", f"{r}encoder.layer.{i}."
        for a, b in [("attn.out_proj", "attention.output.dense"), ("norm1", "attention.LayerNorm"),
                     ("norm2", "intermediate.LayerNorm"), ("ffn.fc1", "intermediate.dense"),
                     ("ffn.fc2", "output.dense")]:
            pairs += [(o + a + ".weight", h + b + ".weight"), (o + a + ".bias", h + b + ".bias")]
    return pairs


def prelayernorm_encoder_to_hf(model: EncoderForMaskedLM | EncoderForPreTraining):
    """A `transformers.RobertaPreLayerNormForMaskedLM` with the weights of our pre-LN encoder and its MLM head
    (BERT itself is post-LN; this is the pre-LN model `transformers` has). An NSP head is not carried over.

    RoBERTa numbers the positions of real tokens from pad_token_id + 1, so our position table is copied there;
    outputs agree at real (non-padding) tokens of right-padded batches."""
    from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    if not isinstance(model, (EncoderForMaskedLM, EncoderForPreTraining)):
        raise ValueError(f"expected EncoderForMaskedLM or EncoderForPreTraining, got {type(model).__name__}")
    c = model.cfg
    if c.position != "learned" or not c.norm_first or not c.embedding_norm or not c.type_vocab_size:
        raise ValueError("only pre-LN encoders with learned positions, segment embeddings and an embedding "
                         "LayerNorm map to RobertaPreLayerNorm")
    hf_cfg = RobertaPreLayerNormConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        intermediate_size=c.d_ff, hidden_act=_OUR_ACT[c.activation], hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.attn_dropout, max_position_embeddings=c.max_len + c.pad_token_id + 1,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id,
        tie_word_embeddings=c.tie_word_embeddings)
    hf = RobertaPreLayerNormForMaskedLM(hf_cfg)
    src = model.state_dict()
    state = {h: src[o].clone() for o, h in _prelayernorm_pairs(c.n_layers)}
    positions = hf.state_dict()["roberta_prelayernorm.embeddings.position_embeddings.weight"].clone()
    positions[c.pad_token_id + 1:] = src["encoder.stack.embeddings.position.embedding.weight"]
    state["roberta_prelayernorm.embeddings.position_embeddings.weight"] = positions
    for i in range(c.n_layers):
        s = f"roberta_prelayernorm.encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            for n, t in zip(("query", "key", "value"), src[f"encoder.stack.layers.{i}.attn.in_proj.{p}"].chunk(3)):
                state[s + n + "." + p] = t.clone()
    _load_exact(hf, state, f"{type(model).__name__} to RobertaPreLayerNormForMaskedLM")
    return hf.eval()


def encoder_to_hf(model: TransformerEncoder | EncoderForMaskedLM | EncoderForPreTraining):
    """A `transformers` BertModel, BertForMaskedLM or BertForPreTraining with the weights of our encoder; a pre-LN
    encoder with an MLM head becomes a RobertaPreLayerNormForMaskedLM (`prelayernorm_encoder_to_hf`)."""
    from transformers import BertForMaskedLM, BertForPreTraining, BertModel

    if model.cfg.norm_first and isinstance(model, (EncoderForMaskedLM, EncoderForPreTraining)):
        return prelayernorm_encoder_to_hf(model)
    n = model.cfg.n_layers
    hf_cfg = encoder_config_to_hf(model.cfg)
    src = model.state_dict()
    if isinstance(model, (EncoderForMaskedLM, EncoderForPreTraining)):
        pretraining = isinstance(model, EncoderForPreTraining)
        hf = BertForPreTraining(hf_cfg) if pretraining else BertForMaskedLM(hf_cfg)
        state = _ours_to_bert(src, n, "encoder.", "bert.", pooler=pretraining)
        state.update({h: src[o].clone() for o, h in _MLM_PAIRS + (_NSP_PAIRS if pretraining else [])})
        state["cls.predictions.decoder.weight"] = src["mlm_head.decoder.weight"].clone()
        state["cls.predictions.decoder.bias"] = src["mlm_head.decoder.bias"].clone()
    elif isinstance(model, TransformerEncoder):
        pooler = model.pooler is not None
        hf = BertModel(hf_cfg, add_pooling_layer=pooler)
        state = _ours_to_bert(src, n, "", "", pooler)
    else:
        raise ValueError("expected TransformerEncoder, EncoderForMaskedLM or EncoderForPreTraining, "
                         f"got {type(model).__name__}")
    _load_exact(hf, state, f"{type(model).__name__} to BERT")
    return hf.eval()


# ---------------------------------------------------------------- Llama


def llama_config_from_hf(hf_config) -> LlamaConfig:
    """Our LlamaConfig equivalent of a `transformers.LlamaConfig` (default rotary scaling, no biases)."""
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r} (scaled rotary positions) is not supported")
    if hf_config.hidden_act != "silu" or hf_config.attention_bias or hf_config.mlp_bias:
        raise ValueError("only Llama models with SiLU gates and no biases convert")
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    if head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
        raise ValueError(f"head_dim={head_dim} × {hf_config.num_attention_heads} heads != hidden_size="
                         f"{hf_config.hidden_size}; our attention needs them equal")
    return LlamaConfig(
        vocab_size=hf_config.vocab_size, max_len=hf_config.max_position_embeddings, d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads, n_kv_heads=hf_config.num_key_value_heads,
        n_layers=hf_config.num_hidden_layers, d_ff=hf_config.intermediate_size, layer_norm_eps=hf_config.rms_norm_eps,
        rope_base=float(rope.get("rope_theta", 10000.0)), tie_word_embeddings=hf_config.tie_word_embeddings,
        attn_dropout=hf_config.attention_dropout,
    )


def llama_config_to_hf(cfg: TransformerConfig):
    """A `transformers.LlamaConfig` with the same sizes as our Llama-style config."""
    from transformers import LlamaConfig as HFLlamaConfig

    if (cfg.norm, cfg.activation, cfg.position, cfg.bias, cfg.n_experts) != ("rms", "swiglu", "rotary", False, 0):
        raise ValueError("only decoders with RMSNorm, SwiGLU, rotary positions, no biases and no experts map to "
                         "Llama (build them from bigmodel_course.transformer.LlamaConfig)")
    if cfg.dropout:
        raise ValueError(f"Llama has no residual dropout; this config has dropout={cfg.dropout}")
    return HFLlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_len,
        rms_norm_eps=cfg.layer_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        tie_word_embeddings=cfg.tie_word_embeddings, attention_dropout=cfg.attn_dropout,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def _rotary_halves(w: Tensor, heads: int) -> Tensor:
    """Reorder a Q or K projection's rows per head from interleaved rotary pairs (2i, 2i+1), as our
    RotaryEmbedding and Meta's original Llama rotate them, to `transformers`' halves (i, i + head_dim/2)."""
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _rotary_pairs(w: Tensor, heads: int) -> Tensor:
    """Inverse of `_rotary_halves`."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _llama_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(our key, LlamaForCausalLM key) pairs, the fused Q/K/V projection excepted."""
    pairs = [("transformer.embeddings.word.weight", "model.embed_tokens.weight"),
             ("transformer.final_norm.weight", "model.norm.weight"), ("lm_head.weight", "lm_head.weight")]
    for i in range(n_layers):
        o, h = f"transformer.layers.{i}.", f"model.layers.{i}."
        pairs += [(o + a + ".weight", h + b + ".weight") for a, b in [
            ("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"), ("attn.out_proj", "self_attn.o_proj"),
            ("ffn.gate", "mlp.gate_proj"), ("ffn.up", "mlp.up_proj"), ("ffn.down", "mlp.down_proj")]]
    return pairs


def llama_from_hf(hf_model) -> GPT:
    """Our Llama-style GPT with the weights of a `transformers.LlamaForCausalLM`."""
    cfg = llama_config_from_hf(hf_model.config)
    model = GPT(cfg)
    src = hf_model.state_dict()
    if cfg.tie_word_embeddings:
        src = {**src, "lm_head.weight": src["model.embed_tokens.weight"]}
    state = {o: src[h].clone() for o, h in _llama_pairs(cfg.n_layers)}
    for i in range(cfg.n_layers):
        a = f"model.layers.{i}.self_attn."
        q = _rotary_pairs(src[a + "q_proj.weight"], cfg.n_heads)
        k = _rotary_pairs(src[a + "k_proj.weight"], cfg.n_kv_heads)
        state[f"transformer.layers.{i}.attn.in_proj.weight"] = torch.cat([q, k, src[a + "v_proj.weight"]])
    _load_exact(model, state, "LlamaForCausalLM")
    return model


def llama_to_hf(model: GPT):
    """A `transformers.LlamaForCausalLM` with the weights of our Llama-style GPT."""
    from transformers import LlamaForCausalLM

    cfg = model.cfg
    hf = LlamaForCausalLM(llama_config_to_hf(cfg))
    src = model.state_dict()
    state = {h: src[o].clone() for o, h in _llama_pairs(cfg.n_layers)}
    kv = cfg.n_kv_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        q, k, v = src[f"transformer.layers.{i}.attn.in_proj.weight"].split([cfg.d_model, kv, kv])
        a = f"model.layers.{i}.self_attn."
        state[a + "q_proj.weight"] = _rotary_halves(q, cfg.n_heads).contiguous()
        state[a + "k_proj.weight"] = _rotary_halves(k, cfg.n_kv_heads).contiguous()
        state[a + "v_proj.weight"] = v.clone()
    _load_exact(hf, state, "Llama-style GPT to LlamaForCausalLM")
    return hf.eval()


# ---------------------------------------------------------------- ViT


def _vit_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(our ViT key, transformers ViTForImageClassification key) pairs, Q/K/V excepted."""
    e = "vit.embeddings."
    pairs = [
        ("cls_token", e + "cls_token"), ("position", e + "position_embeddings"),
        ("patch_embed.weight", e + "patch_embeddings.projection.weight"),
        ("patch_embed.bias", e + "patch_embeddings.projection.bias"),
        ("norm.weight", "vit.layernorm.weight"), ("norm.bias", "vit.layernorm.bias"),
        ("head.weight", "classifier.weight"), ("head.bias", "classifier.bias"),
    ]
    for i in range(n_layers):
        o, h = f"layers.{i}.", f"vit.layers.{i}."
        for a, b in [("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.out_proj", "attention.o_proj"),
                     ("ffn.fc1", "mlp.fc1"), ("ffn.fc2", "mlp.fc2")]:
            pairs += [(o + a + ".weight", h + b + ".weight"), (o + a + ".bias", h + b + ".bias")]
    return pairs


def vit_to_hf(model):
    """A `transformers.ViTForImageClassification` with the weights of our `vision.ViT`."""
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTForImageClassification

    from .vision_models import ViT

    if not isinstance(model, ViT):
        raise ValueError(f"expected a bigmodel_course.vision_models.ViT, got {type(model).__name__}")
    c = model.cfg
    if c.stem_channels:
        raise ValueError(f"a ViT with a convolutional stem (stem_channels={list(c.stem_channels)}) has no "
                         "transformers ViTForImageClassification equivalent; only the linear patch embedding converts")
    hf_cfg = HFViTConfig(
        image_size=c.image_size, patch_size=c.patch_size, num_channels=c.in_channels, hidden_size=c.d_model,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, intermediate_size=c.d_ff,
        hidden_act=_OUR_ACT[c.activation], hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attn_dropout,
        layer_norm_eps=c.layer_norm_eps, qkv_bias=True, num_labels=c.num_classes,
    )
    hf = ViTForImageClassification(hf_cfg)
    src = model.state_dict()
    state = {h: src[o].clone() for o, h in _vit_pairs(c.n_layers)}
    for i in range(c.n_layers):
        for p in ("weight", "bias"):
            for n, t in zip(("q_proj", "k_proj", "v_proj"), src[f"layers.{i}.attn.in_proj.{p}"].chunk(3)):
                state[f"vit.layers.{i}.attention.{n}.{p}"] = t.clone()
    _load_exact(hf, state, "ViT to ViTForImageClassification")
    return hf.eval()
