"""LoRA (Hu et al., 2021) with `peft` on the course's GPT exported to `transformers`' GPT2LMHeadModel.

A LoRA adapter leaves a weight matrix W frozen and learns a low-rank update: W x + (α / r) · B A x, with A (r × in)
and B (out × r), B starting at zero so training starts from the original model. Only A and B are trained, and
after training B A can be added into W (`merge_and_unload`), so the merged model is as fast as the original.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .interop import gpt_from_hf, gpt_to_hf
from .transformer import GPT

# GPT-2 module names: c_attn (Q, K, V projection), attn.c_proj (attention output), c_fc and mlp.c_proj (FFN)
ATTENTION_MODULES = ("c_attn",)
ALL_LINEAR_MODULES = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")


def lora_model(model: GPT, rank: int = 8, alpha: float = 16.0, target_modules: Sequence[str] = ATTENTION_MODULES,
               dropout: float = 0.0, trainable_tokens: Sequence[int] = ()):
    """`model` as a GPT2LMHeadModel wrapped by peft with LoRA adapters on `target_modules`: only the adapters
    train (the embeddings, layer norms and every original weight are frozen), plus the embedding rows of
    `trainable_tokens` (peft's trainable tokens: tokens added for fine-tuning, such as the chat tokens, start
    from an initial guess and must learn; with the tied LM head their output rows learn with them)."""
    from peft import LoraConfig, get_peft_model

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    unknown = set(target_modules) - set(ALL_LINEAR_MODULES)
    if not target_modules or unknown:
        raise ValueError(f"target_modules must be some of {ALL_LINEAR_MODULES}, got {list(target_modules)}")
    tokens = sorted(set(trainable_tokens))
    if any(not isinstance(t, int) or not 0 <= t < model.cfg.vocab_size for t in tokens):
        raise ValueError(f"trainable_tokens must be token ids below {model.cfg.vocab_size}, "
                         f"got {list(trainable_tokens)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        fan_in_fan_out=True,  # GPT-2 stores its linear layers as Conv1D (in × out)
                        bias="none", task_type="CAUSAL_LM",
                        trainable_token_indices={"wte": tokens} if tokens else None)
    peft_model = get_peft_model(gpt_to_hf(model), config)
    peft_model.train(model.training)
    return peft_model


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def merge_lora(peft_model) -> GPT:
    """Add each adapter's B A into its weight (`merge_and_unload`) and load the result back into our GPT."""
    merged = peft_model.merge_and_unload()
    return gpt_from_hf(merged)
