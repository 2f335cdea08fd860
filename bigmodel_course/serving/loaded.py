"""A model loaded from the registry, ready to classify raw inputs (texts or 8×8 digit arrays)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .preprocess import encode_texts, pixel_values

if TYPE_CHECKING:  # registry.py imports this module when it loads a model
    from .registry import ModelCard


@dataclass
class LoadedModel:
    """A registry model in eval mode with its card, folder and tokenizer (None for image models)."""

    model: nn.Module
    card: ModelCard
    path: Path
    tokenizer: object | None = None
    load_seconds: float = 0.0

    @property
    def device(self) -> torch.device:
        """Device the weights live on."""
        return next(self.model.parameters()).device

    def logits(self, inputs) -> Tensor:
        """Raw class logits (N, classes) for texts (list[str]) or images ((N, 8, 8) in [0, max_value])."""
        card = self.card
        if card.task == "text":
            batch = encode_texts(self.tokenizer, inputs, int(card.preprocessing["max_len"]))
            kwargs = {k: v.to(self.device) for k, v in batch.items()}
        else:
            kwargs = {"pixel_values": pixel_values(inputs, card.preprocessing).to(self.device)}
        with torch.inference_mode():  # no module state changes: concurrent calls from server threads are safe
            return self.model(**kwargs).logits.float().cpu()

    def predict(self, inputs) -> list[dict]:
        """One {"label", "label_id", "probabilities": {label: p}} per input, label = the argmax of the logits."""
        logits = self.logits(inputs)
        labels = self.card.labels
        out = []
        for best, row in zip(logits.argmax(dim=-1).tolist(), torch.softmax(logits, dim=-1).tolist()):
            out.append({"label": labels[best], "label_id": best,
                        "probabilities": {label: p for label, p in zip(labels, row)}})
        return out
