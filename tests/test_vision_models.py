"""Digits data (split, statistics, augmentation, dataset) and the vision models against independent references."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from bigmodel_course.data import (
    DIGITS_MAX_VALUE,
    DigitsDataset,
    digits_augmentation,
    digits_splits,
    normalise_digits,
)
from bigmodel_course.interop import vit_to_hf
from bigmodel_course.vision_models import ResNetForImageClassification, ViT, ViTConfig


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


# ---------------------------------------------------------------- normalisation


def test_normalise_digits_formula_and_types():
    x = np.array([[0.0, 4.0], [8.0, 16.0]])
    out = normalise_digits(x, 4.0, 2.0)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    torch.testing.assert_close(out, torch.tensor([[-2.0, 0.0], [2.0, 6.0]]))
    torch.testing.assert_close(normalise_digits(torch.tensor(x), np.float32(4.0), 2), out)  # tensor in, numpy scalar
    torch.testing.assert_close(normalise_digits([[16]], 4, 2), torch.tensor([[6.0]]))  # nested lists, ints
    ints = torch.tensor([[3, 5]])
    normalise_digits(ints, 1.0, 1.0)
    assert ints.tolist() == [[3, 5]]  # the input is not modified


@pytest.mark.parametrize(
    "x, mean, std, message",
    [
        ([1.0], 0.0, 0.0, "std must be positive"),
        ([1.0], 0.0, -1.0, "std must be positive"),
        ([1.0], float("nan"), 1.0, "mean must be finite"),
        ([1.0], "a", 1.0, "mean must be a number"),
        ([1.0], 0.0, None, "std must be a number"),
        ([], 0.0, 1.0, "empty"),
        ([1.0, float("inf")], 0.0, 1.0, "NaN or infinity"),
        (torch.tensor([True]), 0.0, 1.0, "real numbers"),
    ],
)
def test_normalise_digits_rejects_bad_input(x, mean, std, message):
    with pytest.raises(ValueError, match=message):
        normalise_digits(x, mean, std)


# ---------------------------------------------------------------- splits


def test_split_is_the_svm_baseline_split(splits):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x_test, _, y_test = train_test_split(digits.images, digits.target, test_size=0.2, stratify=digits.target,
                                            random_state=0)
    np.testing.assert_array_equal(splits.x_test, x_test)
    np.testing.assert_array_equal(splits.y_test, y_test)
    np.testing.assert_array_equal(digits.images[splits.idx_test], splits.x_test)


def test_split_counts_disjoint_stratified_deterministic(splits):
    assert splits.counts == {"train": 1221, "val": 216, "test": 360}
    a, b, c = set(splits.idx_train), set(splits.idx_val), set(splits.idx_test)
    assert not (a & b) and not (a & c) and not (b & c) and len(a | b | c) == 1797
    for y in (splits.y_train, splits.y_val, splits.y_test):
        share = np.bincount(y, minlength=10) / len(y)
        assert np.abs(share - 0.1).max() < 0.012  # every class about 10 % in every split
    again = digits_splits()
    for name in ("idx_train", "idx_val", "idx_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(splits, name))
    assert not np.array_equal(digits_splits(seed=1).idx_test, splits.idx_test)
    assert digits_splits(val_size=0.1).counts == {"train": 1293, "val": 144, "test": 360}


def test_split_pixel_scale_and_statistics_from_train_only(splits):
    for x in (splits.x_train, splits.x_val, splits.x_test):
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8)
        assert x.min() == 0.0 and x.max() == DIGITS_MAX_VALUE
    assert splits.mean == pytest.approx(float(splits.x_train.mean(dtype=np.float64)))
    assert splits.std == pytest.approx(float(splits.x_train.std(dtype=np.float64)))
    everything = np.concatenate([splits.x_train, splits.x_val, splits.x_test])
    assert splits.mean != pytest.approx(float(everything.mean()), abs=1e-6)
    assert splits.preprocessing() == {"image_size": 8, "max_value": 16.0, "mean": splits.mean, "std": splits.std}


@pytest.mark.parametrize("kwargs", [{"test_size": 0.0}, {"test_size": 1.0}, {"val_size": -0.1}, {"val_size": "0.1"},
                                    {"seed": -1}, {"seed": 1.5}])
def test_split_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        digits_splits(**kwargs)


# ---------------------------------------------------------------- augmentation and dataset


def test_augmentation_keeps_shape_dtype_and_is_seeded(splits):
    aug = digits_augmentation()
    x = torch.as_tensor(splits.x_train[:1])  # (1, 8, 8)
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b)
    outs = [aug(x) for _ in range(5)]
    assert any(not torch.equal(o, x) for o in outs)  # it does change images
    assert all(float(o.min()) >= 0.0 and float(o.max()) <= DIGITS_MAX_VALUE + 1e-4 for o in outs)
    same = digits_augmentation(degrees=0.0, translate=0.0, scale=(1.0, 1.0))(x)
    torch.testing.assert_close(same, x)  # the identity transform leaves the image alone


@pytest.mark.parametrize("kwargs", [{"degrees": -1.0}, {"degrees": 180.0}, {"translate": 1.0}, {"scale": (1.1, 0.9)},
                                    {"scale": (0.0, 1.0)}])
def test_augmentation_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        digits_augmentation(**kwargs)


def test_dataset_items_and_batches(splits):
    ds = DigitsDataset(splits.x_test, splits.y_test, splits.mean, splits.std)
    assert len(ds) == 360
    item = ds[3]
    assert item["pixel_values"].shape == (1, 8, 8) and item["pixel_values"].dtype == torch.float32
    assert item["labels"].dtype == torch.int64 and int(item["labels"]) == splits.y_test[3]
    torch.testing.assert_close(item["pixel_values"][0], normalise_digits(splits.x_test[3], splits.mean, splits.std))
    batch = next(iter(DataLoader(ds, batch_size=16)))
    assert batch["pixel_values"].shape == (16, 1, 8, 8) and batch["labels"].shape == (16,)


def test_dataset_applies_transform_before_normalisation(splits):
    seen = []

    def spy(x):
        seen.append(x.clone())
        return x + 1.0

    ds = DigitsDataset(splits.x_train[:2], splits.y_train[:2], 2.0, 4.0, transform=spy)
    out = ds[1]["pixel_values"]
    torch.testing.assert_close(seen[0], torch.as_tensor(splits.x_train[1:2]))  # raw 0..16 scale
    torch.testing.assert_close(out, (torch.as_tensor(splits.x_train[1:2]) + 1.0 - 2.0) / 4.0)


def test_dataset_augmented_items_are_seeded(splits):
    ds = DigitsDataset(splits.x_train, splits.y_train, splits.mean, splits.std, transform=digits_augmentation())
    torch.manual_seed(1)
    a = ds[0]["pixel_values"]
    torch.manual_seed(1)
    torch.testing.assert_close(ds[0]["pixel_values"], a)


@pytest.mark.parametrize(
    "images, labels, kwargs, message",
    [
        (np.zeros((2, 8, 7)), [0, 1], {}, r"images must be \(N, 8, 8\)"),
        (np.zeros((2, 8, 8)), [0], {}, "labels must be"),
        (np.zeros((0, 8, 8)), [], {}, "empty"),
        (np.full((1, 8, 8), 17.0), [0], {}, r"\[0, 16.0\]"),
        (np.full((1, 8, 8), -1.0), [0], {}, r"\[0, 16.0\]"),
        (np.zeros((1, 8, 8)), [0], {"std": 0.0}, "std must be positive"),
        (np.zeros((1, 8, 8)), [0], {"transform": 3}, "transform must be callable"),
    ],
)
def test_dataset_rejects_bad_input(images, labels, kwargs, message):
    args = {"mean": 0.0, "std": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        DigitsDataset(images, labels, **args)


# ---------------------------------------------------------------- ViT


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random non-trivial weights everywhere (fresh init has zero biases and unit LayerNorms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("patch_size, activation", [(2, "gelu"), (4, "gelu_tanh"), (1, "relu")])
def test_vit_matches_transformers(patch_size, activation):
    torch.manual_seed(0)
    cfg = ViTConfig(patch_size=patch_size, d_model=32, n_heads=4, n_layers=2, d_ff=48, dropout=0.0,
                    activation=activation, layer_norm_eps=1e-6)
    ours = _perturbed(ViT(cfg))
    hf = vit_to_hf(ours)
    assert hf.config.image_size == 8 and hf.config.num_channels == 1 and hf.config.qkv_bias
    assert hf.config.layer_norm_eps == 1e-6 and hf.config.hidden_dropout_prob == 0.0
    x = torch.randn(5, 1, 8, 8)
    labels = torch.tensor([0, 3, 9, 1, 2])
    with torch.no_grad():
        out = ours(x, labels=labels)
        ref = hf(pixel_values=x, labels=labels)
    assert out.logits.shape == (5, 10)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)
    with torch.no_grad():  # the comparison can fail: a changed weight changes our logits
        ours.layers[0].attn.in_proj.weight[0, 0] += 1.0
        assert not torch.allclose(ours(x).logits, ref.logits, atol=1e-5)


def test_vit_to_hf_rejects_other_models():
    with pytest.raises(ValueError, match="expected a bigmodel_course.vision_models.ViT"):
        vit_to_hf(ResNetForImageClassification())
    with pytest.raises(ValueError, match=r"convolutional stem \(stem_channels=\[8\]\) has no transformers"):
        vit_to_hf(ViT(ViTConfig(d_model=16, n_heads=2, n_layers=1, stem_channels=(8,))))


def test_vit_attention_maps_and_config_round_trip():
    cfg = ViTConfig(d_model=32, n_heads=4, n_layers=3, dropout=0.0)
    model = ViT(cfg).eval()
    out = model(torch.randn(2, 1, 8, 8), return_attention=True)
    assert cfg.n_patches == 16 and len(out.attentions) == 3
    assert out.attentions[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 17))
    assert model(torch.randn(2, 1, 8, 8)).attentions is None
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ViTConfig keys"):
        ViTConfig.from_dict({"width": 3})


@pytest.mark.parametrize(
    "kwargs, message",
    [({"patch_size": 3}, "does not divide image_size"), ({"n_heads": 5}, "does not divide d_model"),
     ({"d_model": 0}, "d_model must be positive"), ({"activation": "swish"}, "unknown activation")],
)
def test_vit_config_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**kwargs)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(2, 1, 7, 7), r"pixel_values must be \(batch, 1, 8, 8\)"),  # wrong image size
        (torch.randn(2, 3, 8, 8), r"pixel_values must be \(batch, 1, 8, 8\)"),  # wrong channels
        (torch.randn(1, 8, 8), r"pixel_values must be \(batch, 1, 8, 8\)"),  # no batch dimension
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), "floating point"),  # integer pixels
    ],
)
def test_vit_rejects_bad_input(x, message):
    with pytest.raises(ValueError, match=message):
        ViT(ViTConfig(d_model=16, n_heads=2, n_layers=1))(x)


# ---------------------------------------------------------------- ResNet-18


def _reference_resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's resnet18 with the small-input stem (3×3 stride-1 conv, no max-pool), built independently."""
    from torchvision.models import resnet18

    ref = resnet18(weights=None, num_classes=num_classes)
    ref.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    return ref


def test_resnet_is_torchvision_resnet18_with_small_stem():
    torch.manual_seed(0)
    model = ResNetForImageClassification(num_classes=10, in_channels=1).eval()
    ref = _reference_resnet18(10, 1).eval()
    ref.load_state_dict(model.resnet.state_dict())  # strict: identical parameter names and shapes
    x = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        out = model(x, labels=labels)
        expected = ref(x)
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(expected, labels))
    from torchvision.models import resnet18

    torchvision_model = resnet18(weights=None, num_classes=10)
    standard = torchvision_model.state_dict()
    ours = model.resnet.state_dict()
    assert set(standard) == set(ours)  # same layers as ResNet-18; only the stem convolution differs in shape
    assert [k for k in ours if ours[k].shape != standard[k].shape] == ["conv1.weight"]
    stem = 64 * 3 * 7 * 7 - 64 * 1 * 3 * 3  # torchvision's 7x7 RGB stem minus our 3x3 one-channel stem
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in torchvision_model.parameters()) - stem == 11_172_810


def test_resnet_keeps_spatial_resolution_through_the_stages():
    model = ResNetForImageClassification().eval()
    sizes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model.resnet, name).register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-2:]))
    with torch.no_grad():
        model(torch.randn(1, 1, 8, 8))
    assert {k: tuple(v) for k, v in sizes.items()} == {"layer1": (8, 8), "layer2": (4, 4), "layer3": (2, 2),
                                                       "layer4": (1, 1)}


def test_resnet_config_and_channels():
    model = ResNetForImageClassification(num_classes=3, in_channels=2)
    assert model.config == {"num_classes": 3, "in_channels": 2}
    assert ResNetForImageClassification(**model.config).resnet.fc.out_features == 3
    assert model(torch.randn(2, 2, 8, 8)).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="must be positive"):
        ResNetForImageClassification(num_classes=0)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(2, 3, 8, 8), r"pixel_values must be \(batch, 1, height, width\)"),  # wrong channels
        (torch.randn(1, 8, 8), r"pixel_values must be \(batch, 1, height, width\)"),  # no batch dimension
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "floating point"),  # integer pixels
    ],
)
def test_resnet_rejects_bad_input(x, message):
    with pytest.raises(ValueError, match=message):
        ResNetForImageClassification()(x)


def test_models_train_on_digits_batches(splits):
    """One optimizer step on a real batch lowers the loss of both models (the wiring is trainable)."""
    batch = next(iter(DataLoader(DigitsDataset(splits.x_train[:64], splits.y_train[:64], splits.mean, splits.std),
                                 batch_size=64)))
    for model in (ViT(ViTConfig(d_model=32, n_heads=4, n_layers=1, dropout=0.0)), ResNetForImageClassification()):
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        losses = []
        for _ in range(3):
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0]


def test_vit_initialisation_balances_patches_and_positions():
    torch.manual_seed(0)
    model = ViT(ViTConfig(d_model=64, n_heads=4, n_layers=1))
    w = model.patch_embed.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.004  # N(0, 0.02), not the default ~U(-0.5, 0.5) for 2×2 patches
    assert torch.count_nonzero(model.patch_embed.bias) == 0
    assert abs(float(model.position.detach().std()) - 0.02) < 0.004


# ---------------------------------------------------------------- ViT with a convolutional stem


def test_conv_stem_vit_is_stem_then_patch_vit():
    """The conv-stem ViT equals 3×3 conv → batch norm → ReLU layers written with torch.nn.functional, followed by a
    plain patch-embedding ViT (with as many input channels as the stem's last layer) holding the same weights."""
    import json

    import torch.nn.functional as F

    torch.manual_seed(0)
    cfg = ViTConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.0, stem_channels=(8, 6))
    ours = _perturbed(ViT(cfg))
    with torch.no_grad():  # non-trivial running statistics, so eval-mode batch norm is not the identity
        for m in ours.stem:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    plain = ViT(ViTConfig(**{**cfg.to_dict(), "in_channels": 6, "stem_channels": ()})).eval()
    own = ours.state_dict()
    plain.load_state_dict({k: v for k, v in own.items() if not k.startswith("stem.")})

    def stem(x):
        for i in (0, 3):
            conv, bn = ours.stem[i], ours.stem[i + 1]
            x = F.conv2d(x, conv.weight, padding=1)
            x = F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
        return x

    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out.logits, plain(stem(x)).logits, atol=1e-5, rtol=0)
        ours.stem[0].weight[0, 0, 1, 1] += 1.0  # the comparison can fail: the stem's weights matter
        assert not torch.allclose(ours(x).logits, out.logits, atol=1e-5)
    assert cfg.n_patches == 16 and out.last_hidden_state.shape == (3, 17, 32)  # the stem keeps 8×8: 16 tokens
    assert ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # a list after JSON, a tuple again


def test_patch_vit_has_no_stem_weights():
    """Without stem_channels the model is the original ViT: no stem parameters, the same keys as before."""
    keys = ViT(ViTConfig(d_model=16, n_heads=2, n_layers=1)).state_dict()
    assert not any(k.startswith("stem.") for k in keys) and keys["patch_embed.weight"].shape == (16, 1, 2, 2)


@pytest.mark.parametrize("channels", [(0,), (8, -1), (True,), (2.5,)])
def test_vit_config_rejects_bad_stem(channels):
    with pytest.raises(ValueError, match="stem_channels must be positive ints"):
        ViTConfig(stem_channels=channels)
