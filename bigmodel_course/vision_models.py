"""Vision models for small images: a Vision Transformer built from the package's Transformer blocks (linear patch
embedding, or a convolutional stem before it), and torchvision's ResNet-18 adapted to 8×8 inputs; both return a
ModelOutput (logits, loss)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from .transformer import (ACTIVATIONS, ModelOutput, TransformerBlock, TransformerConfig, classification_loss,
                          init_weights)


@dataclass
class ViTConfig:
    """Sizes of a Vision Transformer (ViT-style: patch embedding, [CLS] token, learned positions, pre-LN).

    stem_channels: empty for the original linear patch embedding; otherwise the widths of 3×3 stride-1
    convolutions (each with batch norm and ReLU) run before the patch embedding, a convolutional stem as in
    Xiao et al. 2021, "Early convolutions help transformers see better"."""

    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    num_classes: int = 10
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None  # defaults to 4 * d_model
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    stem_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.stem_channels = tuple(self.stem_channels)  # a list after a JSON round trip
        if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in self.stem_channels):
            raise ValueError(f"stem_channels must be positive ints, got {self.stem_channels!r}")
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "d_model", "n_heads", "n_layers",
                     "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"patch_size={self.patch_size} does not divide image_size={self.image_size}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")

    @property
    def n_patches(self) -> int:
        """Number of patches per image."""
        return (self.image_size // self.patch_size) ** 2

    def block_config(self) -> TransformerConfig:
        """The Transformer block sizes (sequence = [CLS] + patches)."""
        return TransformerConfig(
            vocab_size=1, max_len=self.n_patches + 1, d_model=self.d_model, n_heads=self.n_heads,
            n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout, attn_dropout=self.attn_dropout,
            activation=self.activation, norm_first=True, layer_norm_eps=self.layer_norm_eps,
            num_labels=self.num_classes,
        )

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        data = asdict(self)
        data["stem_channels"] = list(self.stem_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ViTConfig":
        """Build a config from a dict, rejecting unknown keys."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ViTConfig keys: {sorted(unknown)}")
        return cls(**data)


def conv_stem(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """3×3 stride-1 convolutions with batch norm and ReLU (size-preserving); empty when channels is empty."""
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        in_channels = c
    return nn.Sequential(*layers)


class ViT(nn.Module):
    """Vision Transformer: [optional convolutional stem →] non-overlapping patches → linear embedding,
    [CLS] + learned positions, pre-LN encoder blocks, final LayerNorm, linear classifier on [CLS]."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        block = cfg.block_config()
        self.stem = conv_stem(cfg.in_channels, cfg.stem_channels)
        embed_in = cfg.stem_channels[-1] if cfg.stem_channels else cfg.in_channels
        self.patch_embed = nn.Conv2d(embed_in, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.position = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerBlock(block) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self.apply(init_weights)
        # like the patch projection of the reference ViT: N(0, 0.02), so that at initialisation the patch
        # content (PyTorch's default Conv2d init is ~25x larger) does not drown the position embeddings
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None,
                return_attention: bool = False) -> ModelOutput:
        """Class logits (B, num_classes) for images (B, C, H, W); given labels (B,), the cross-entropy loss."""
        c = self.cfg
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(
                f"pixel_values must be (batch, {c.in_channels}, {c.image_size}, {c.image_size}), "
                f"got {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be floating point, got {pixel_values.dtype}")
        x = self.patch_embed(self.stem(pixel_values)).flatten(2).transpose(1, 2)  # (B, patches, d)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        x = self.drop(x)
        attentions = []
        for layer in self.layers:
            x, w = layer(x, return_weights=return_attention)
            attentions.append(w)
        x = self.norm(x)
        logits = self.head(x[:, 0])
        return ModelOutput(last_hidden_state=x, logits=logits, loss=classification_loss(logits, labels),
                           pooled=x[:, 0], attentions=attentions if return_attention else None)


class ResNetForImageClassification(nn.Module):
    """torchvision ResNet-18 (random weights) for tiny images, returning a ModelOutput like the other models.

    The stem is a 3×3 stride-1 convolution with no max-pool, so an 8×8 input keeps
    8×8 → 4×4 → 2×2 → 1×1 through the four stages instead of vanishing after the stem.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        from torchvision.models import resnet18

        if num_classes <= 0 or in_channels <= 0:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes} and {in_channels}")
        self.config = {"num_classes": num_classes, "in_channels": in_channels}
        self.resnet = resnet18(weights=None, num_classes=num_classes)
        self.resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.resnet.maxpool = nn.Identity()

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """Class logits (B, num_classes) for images (B, C, H, W); given labels (B,), the cross-entropy loss."""
        c = self.config["in_channels"]
        if pixel_values.dim() != 4 or pixel_values.shape[1] != c:
            raise ValueError(f"pixel_values must be (batch, {c}, height, width), got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be floating point, got {pixel_values.dtype}")
        logits = self.resnet(pixel_values)
        return ModelOutput(logits=logits, loss=classification_loss(logits, labels))
