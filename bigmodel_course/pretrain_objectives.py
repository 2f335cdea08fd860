"""Self-supervised pre-training objectives: MLM masking (80/10/10), NSP sentence pairs, causal-LM blocks."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100  # label value that cross-entropy skips


def mask_tokens(
    input_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mlm_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: choose `mlm_prob` of the ordinary tokens; of those 80 % → [MASK], 10 % → random, 10 % kept.

    Special and padding tokens (`special_ids`) are never chosen. Returns (masked ids, labels) where
    labels hold the original id at chosen positions and -100 elsewhere.
    """
    if input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be torch.long, got {input_ids.dtype}")
    if not 0.0 < mlm_prob < 1.0:
        raise ValueError(f"mlm_prob must be in (0, 1), got {mlm_prob}")
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    if mask_id not in special.tolist():
        raise ValueError(f"mask_id {mask_id} must be one of the special ids {special.tolist()}")
    if special.numel() >= vocab_size:
        raise ValueError(f"vocab_size {vocab_size} leaves no ordinary token besides {special.numel()} special ones")
    ordinary = ~torch.isin(input_ids, special)
    rand = torch.rand(input_ids.shape, generator=generator)
    chosen = ordinary & (rand < mlm_prob)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    action = torch.rand(input_ids.shape, generator=generator)  # 80 % mask, 10 % random, 10 % keep
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    normal_ids = torch.tensor([i for i in range(vocab_size) if i not in set(special.tolist())], dtype=torch.long)
    picks = torch.randint(len(normal_ids), (int(to_random.sum()),), generator=generator)
    masked[to_random] = normal_ids[picks]
    return masked, labels


@dataclass(frozen=True)
class SentencePair:
    """One NSP example: label 0 = `b` really follows `a` (IsNext), 1 = `b` comes from another document (NotNext)."""

    a: str
    b: str
    label: int


IS_NEXT, NOT_NEXT = 0, 1  # the label convention of BERT and `transformers.BertForPreTraining`


def make_nsp_pairs(documents: Sequence[Sequence[str]], seed: int = 0) -> list[SentencePair]:
    """One pair per consecutive sentence pair: half IsNext (the true next sentence), half NotNext (another document)."""
    docs = [list(d) for d in documents if len(d) > 0]
    if len(docs) < 2:
        raise ValueError(f"NSP needs at least 2 non-empty documents to draw NotNext sentences, got {len(docs)}")
    rng = random.Random(seed)
    pairs = []
    for di, doc in enumerate(docs):
        for si in range(len(doc) - 1):
            if rng.random() < 0.5:
                pairs.append(SentencePair(doc[si], doc[si + 1], IS_NEXT))
            else:
                other = rng.randrange(len(docs) - 1)
                other += other >= di  # any document but this one
                pairs.append(SentencePair(doc[si], rng.choice(docs[other]), NOT_NEXT))
    return pairs


def causal_lm_blocks(token_ids: Sequence[int] | Tensor, block_size: int) -> Tensor:
    """Cut one long token stream into (n_blocks, block_size) contiguous blocks; an incomplete last block is dropped."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"token_ids must be one flat (1-D) sequence, got shape {tuple(ids.shape)}")
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (an input and a next token), got {block_size}")
    n = ids.numel() // block_size
    if n == 0:
        raise ValueError(f"only {ids.numel()} tokens, fewer than one block of {block_size}")
    return ids[: n * block_size].view(n, block_size)
