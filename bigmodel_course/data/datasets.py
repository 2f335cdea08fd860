"""PyTorch datasets for text classification and causal language modelling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler


def _encoder(tokenizer, max_len: int):
    """Return (text -> ids truncated to max_len with specials, pad id) for our or Hugging Face tokenizers."""
    from ..tokenization import PAD, CharTokenizer

    if isinstance(tokenizer, CharTokenizer):
        return (lambda t: tokenizer.encode(t, max_len=max_len)), tokenizer.pad_id
    try:  # transformers tokenizer
        from transformers import PreTrainedTokenizerBase

        if isinstance(tokenizer, PreTrainedTokenizerBase):
            if tokenizer.pad_token_id is None:
                raise ValueError("the transformers tokenizer has no pad token")
            return (lambda t: tokenizer(t, truncation=True, max_length=max_len)["input_ids"]), tokenizer.pad_token_id
    except ImportError:  # pragma: no cover
        pass
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        pad = tokenizer.token_to_id(PAD)
        if pad is None:
            raise ValueError("the tokenizers.Tokenizer has no [PAD] token")

        def enc(t: str) -> list[int]:
            ids = tokenizer.encode(t).ids
            return ids if len(ids) <= max_len else ids[: max_len - 1] + ids[-1:]  # keep the final [SEP]

        return enc, pad
    raise ValueError(f"unsupported tokenizer type {type(tokenizer).__name__}")


def collate(batch: Sequence[dict[str, Tensor]], pad_id: int = 0) -> dict[str, Tensor]:
    """Stack examples, padding every 1-D field to the longest in the batch (input_ids with pad_id, others with 0)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Tensor] = {}
    for key in batch[0]:
        values = [example[key] for example in batch]
        if values[0].dim() == 0:
            out[key] = torch.stack(values)
            continue
        width = max(v.shape[0] for v in values)
        fill = pad_id if key == "input_ids" else (-100 if key == "labels" else 0)
        padded = torch.full((len(values), width), fill, dtype=values[0].dtype)
        for i, v in enumerate(values):
            padded[i, : v.shape[0]] = v
        out[key] = padded
    return out


class ClassificationDataset(Dataset):
    """Texts and integer labels, tokenized once; items are dicts of input_ids, attention_mask, labels."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer, max_len: int):
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        if not isinstance(max_len, int) or max_len < 3:
            raise ValueError(f"max_len must be an int >= 3, got {max_len!r}")
        encode, self.pad_id = _encoder(tokenizer, max_len)
        self.max_len = max_len
        self.ids = [torch.tensor(encode(t), dtype=torch.long) for t in texts]
        self.labels = torch.tensor([int(y) for y in labels], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}

    def collate(self, batch: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad a batch dynamically to its longest example with this dataset's pad id (use as collate_fn)."""
        return collate(batch, pad_id=self.pad_id)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, so per-batch padding wastes little compute.

    With `shuffle`, each epoch shuffles all indices with (seed, epoch), cuts them into pools of `pool_batches`
    batches, sorts each pool by length, cuts it into batches and shuffles the batch order: batches stay random
    across the epoch while their members are alike in length. Without it, batches follow the length order (for
    evaluation, where order does not matter). `set_epoch` is called by the Trainer at every pass.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, pool_batches: int = 50,
                 seed: int = 0) -> None:
        if len(lengths) == 0:
            raise ValueError("lengths is empty")
        for name, value in (("batch_size", batch_size), ("pool_batches", pool_batches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.shuffle, self.pool_batches, self.seed = batch_size, shuffle, pool_batches, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass's order a function of (seed, epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        n, b = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices.tolist()
            yield from (order[i:i + b] for i in range(0, n, b))
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g)
        pool = b * self.pool_batches
        batches = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices].tolist()
            batches += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]


class LMBlockDataset(Dataset):
    """Contiguous non-overlapping blocks of a token stream for causal LM; the model shifts labels itself."""

    def __init__(self, token_ids: Sequence[int] | Tensor, block_size: int):
        from ..pretrain_objectives import causal_lm_blocks

        self.block_size = block_size
        self.blocks = causal_lm_blocks(token_ids, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        block = self.blocks[i]
        return {"input_ids": block, "labels": block.clone()}
