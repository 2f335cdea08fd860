"""Post-training: supervised fine-tuning (SFT) on conversations and direct preference optimisation (DPO).

SFT is the causal-LM loss restricted to the assistant's tokens (`chat.render`'s loss mask). DPO (Rafailov et al.,
2023) trains on pairs of replies to the same prompt, one preferred ("chosen") and one not ("rejected"): with the
sequence log-probabilities log π(y|x) of the policy being trained and log π_ref(y|x) of a frozen reference (the
SFT model),

    loss = −log σ(β [(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))]),

which raises the chosen reply's probability relative to the reference more than the rejected one's; β sets how
far the policy may move from the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .chat import Rendered, render, sft_batch
from .tokenization import CharTokenizer
from .transformer import ModelOutput


def sft_loader(examples: Sequence[Rendered], pad_id: int, batch_size: int, shuffle: bool = True,
               seed: int = 0) -> DataLoader:
    """Batches of rendered conversations for SFT (`sft_batch`), reshuffled every pass when `shuffle`."""
    if not examples:
        raise ValueError("no conversations to train on")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return DataLoader(list(examples), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=partial(sft_batch, pad_id=pad_id),
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


def sequence_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> Tensor:
    """Sum over the completion tokens (completion_mask 1) of log p(token | everything before it): shape (B,).

    Works for any causal LM whose output has `.logits` (ours or `transformers`'); the first token is never scored."""
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape) or input_ids.dim() != 2:
        raise ValueError(f"input_ids, attention_mask and completion_mask must share a (batch, length) shape, got "
                         f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}")
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    token_logp = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logp * completion_mask[:, 1:].to(token_logp.dtype)).sum(-1)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """The mean DPO loss over pairs and the implicit rewards β·(log π − log π_ref) of the chosen and rejected
    replies (per pair)."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (messages up to the assistant's turn) with a preferred and a dispreferred reply."""

    prompt: tuple[dict, ...]
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected replies must differ")


def pair_batch(pairs: Sequence[PreferencePair], tokenizer: CharTokenizer, max_len: int) -> dict[str, Tensor]:
    """Chosen conversations in the first half of the batch, rejected in the second (same prompts, same order):
    input_ids, attention_mask and completion_mask (1 on the reply and its <|end|>)."""
    if not pairs:
        raise ValueError("no preference pairs")
    rows: list[Rendered] = []
    for side in ("chosen", "rejected"):
        for p in pairs:
            rows.append(render([*p.prompt, {"role": "assistant", "content": getattr(p, side)}], tokenizer, max_len))
    batch = sft_batch(rows, tokenizer.pad_id)
    completion = torch.zeros_like(batch["input_ids"])
    for r, row in enumerate(rows):  # only the last turn is the completion being compared
        prompt_len = len(render(list(pairs[r % len(pairs)].prompt), tokenizer, add_generation_prompt=True).input_ids)
        completion[r, prompt_len:len(row.input_ids)] = 1
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "completion_mask": completion}


def preference_loader(pairs: Sequence[PreferencePair], tokenizer: CharTokenizer, max_len: int, batch_size: int,
                      shuffle: bool = True, seed: int = 0) -> DataLoader:
    """Batches of `pair_batch` over the pairs, reshuffled every pass when `shuffle`."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return DataLoader(list(pairs), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=partial(pair_batch, tokenizer=tokenizer, max_len=max_len),
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


class DPOModel(nn.Module):
    """The policy being trained and a frozen copy of its starting point (the reference; a `reference` passed in is
    frozen in place); forward(**pair_batch) returns the DPO loss, and as `logits` the per-pair reward margins
    (chosen − rejected)."""

    def __init__(self, policy: nn.Module, beta: float, reference: nn.Module | None = None) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.policy, self.beta = policy, beta
        self.reference = copy.deepcopy(policy) if reference is None else reference
        self.reference.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.reference.eval()  # no dropout in the reference, ever
        return self

    def forward(self, input_ids, attention_mask, completion_mask, labels=None) -> ModelOutput:
        logps = sequence_logprobs(self.policy, input_ids, attention_mask, completion_mask)
        with torch.no_grad():
            ref = sequence_logprobs(self.reference, input_ids, attention_mask, completion_mask)
        n = input_ids.shape[0] // 2
        loss, chosen, rejected = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], self.beta)
        return ModelOutput(loss=loss, logits=(chosen - rejected)[:, None])
