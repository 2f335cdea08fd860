"""The model architectures the registry can rebuild from a JSON config, and the task each one serves."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

TASKS = ("text", "image")


def _gpt_classifier(config: dict) -> nn.Module:
    """Decoder-only GPT with a sequence-classification head."""
    from ..transformer import GPTConfig, GPTForSequenceClassification

    return GPTForSequenceClassification(GPTConfig.from_dict(config))


def _encoder_classifier(config: dict) -> nn.Module:
    """BERT-style encoder with a sequence-classification head."""
    from ..transformer import EncoderConfig, EncoderForSequenceClassification

    return EncoderForSequenceClassification(EncoderConfig.from_dict(config))


def _vit(config: dict) -> nn.Module:
    """Vision Transformer for small images."""
    from ..vision_models import ViT, ViTConfig

    return ViT(ViTConfig.from_dict(config))


def _resnet18_small(config: dict) -> nn.Module:
    """torchvision ResNet-18 adapted to 8×8 inputs."""
    from ..vision_models import ResNetForImageClassification

    unknown = set(config) - {"num_classes", "in_channels"}
    if unknown:
        raise ValueError(f"unknown resnet18_small keys: {sorted(unknown)}")
    return ResNetForImageClassification(**config)


ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {
    "gpt_classifier": _gpt_classifier,
    "encoder_classifier": _encoder_classifier,
    "vit": _vit,
    "resnet18_small": _resnet18_small,
}
ARCHITECTURE_TASKS = {"gpt_classifier": "text", "encoder_classifier": "text", "vit": "image", "resnet18_small": "image"}


def check_architecture(architecture: str, task: str | None = None) -> str:
    """Return `architecture` if it is known (and serves `task` when given), else raise ValueError."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if ARCHITECTURE_TASKS[architecture] != task:
            kind = ARCHITECTURE_TASKS[architecture]
            raise ValueError(f"architecture {architecture!r} makes {kind} models, not {task} models")
    return architecture


def build_model(architecture: str, config: dict) -> nn.Module:
    """A freshly initialised model of `architecture` built from its JSON config."""
    check_architecture(architecture)
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    try:
        return ARCHITECTURES[architecture](dict(config))
    except TypeError as e:  # e.g. a config key with the wrong type
        raise ValueError(f"config does not fit architecture {architecture!r}: {e}") from None



def parameter_count(architecture: str, config: dict) -> int:
    """Parameters of the model `architecture` builds from `config`, counted without allocating its weights: built
    on PyTorch's meta device, and a deep model extrapolated from its one- and two-layer versions."""
    import torch

    check_architecture(architecture)
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")

    def count(cfg: dict) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(architecture, cfg).parameters())

    layers = config.get("n_layers")
    if isinstance(layers, int) and not isinstance(layers, bool) and layers > 2:
        one, two = count({**config, "n_layers": 1}), count({**config, "n_layers": 2})
        return one + (layers - 1) * (two - one)
    return count(config)
