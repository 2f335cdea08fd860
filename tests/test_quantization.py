"""Group-wise weight-only quantization against a NumPy reference, and on a whole GPT."""

import numpy as np
import pytest
import torch

from bigmodel_course.quantization import (
    WeightOnlyEmbedding,
    WeightOnlyLinear,
    fake_quantize_int8,
    group_quantized_bytes,
    linear_input_absmax,
    linear_inputs,
    pack_int4,
    quantization_error,
    quantize_model,
    quantize_weight,
    smoothquant_scales,
    unpack_int4,
    w8a8_errors,
    weight_bytes,
)
from bigmodel_course.transformer import GPT, GPTConfig


def numpy_reference(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    top = 2 ** (bits - 1) - 1
    g = w.reshape(w.shape[0], -1, group)
    scales = np.maximum(np.abs(g).max(axis=-1) / top, 1e-8).astype(np.float16)
    q = np.clip(np.round(g / scales.astype(np.float32)[..., None]), -top, top).astype(np.int8)
    return q.reshape(w.shape), scales


def test_int4_packing_round_trips_every_value():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantize_matches_the_numpy_reference(bits, group):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(bits + group))
    qw = quantize_weight(w, bits, group)
    q_ref, s_ref = numpy_reference(w.numpy(), bits, group)
    codes = unpack_int4(qw.codes) if bits == 4 else qw.codes
    assert np.array_equal(codes.numpy(), q_ref) and np.array_equal(qw.scales.numpy(), s_ref)
    deq = (q_ref.reshape(24, -1, group) * s_ref.astype(np.float32)[..., None]).reshape(24, 256)
    np.testing.assert_allclose(qw.dequantize().numpy(), deq, rtol=0, atol=1e-6)
    assert qw.nbytes() == 24 * 256 * bits // 8 + 24 * (256 // group) * 2


def test_error_falls_with_more_bits_and_smaller_groups():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    w[:, 7] *= 20  # an outlier column: its group's scale is large, the others' small
    err = {(b, g): (quantize_weight(w, b, g).dequantize() - w).pow(2).mean().item() for b in (4, 8) for g in (32, 256)}
    assert err[(8, 32)] < err[(8, 256)] < err[(4, 32)] < err[(4, 256)]


def test_weight_only_linear_computes_with_the_dequantized_weight():
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 16)
    x = torch.randn(5, 128)
    q = WeightOnlyLinear(quantize_weight(layer.weight, 8, 64), layer.bias)
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, q.qweight.dequantize(), layer.bias))
    assert (q(x) - layer(x)).abs().max() < 0.02 * layer(x).abs().max()


def test_quantized_gpt_keeps_its_tied_head_and_shrinks():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, max_len=32, d_model=128, n_heads=4, n_layers=2)).eval()
    ids = torch.randint(0, 300, (2, 12))
    int8, int4 = quantize_model(model, 8, 64), quantize_model(model, 4, 64)
    assert isinstance(int4.transformer.embeddings.word, WeightOnlyEmbedding)
    assert not any(isinstance(m, torch.nn.Linear) for m in int4.modules())
    with torch.no_grad():
        ref = model(ids).logits
        assert (int8(ids).logits - ref).abs().max() < 0.05 * ref.abs().max()
        assert (int4(ids).logits - ref).abs().max() < 0.5 * ref.abs().max()
        assert torch.equal(int4(ids).logits, int4.lm_head(int4(ids).last_hidden_state))
    assert weight_bytes(model) / weight_bytes(int4) > 6
    assert 3.5 < weight_bytes(model) / weight_bytes(int8) < 4
    assert weight_bytes(model) == sum(p.numel() * 4 for p in model.parameters())  # tied: counted once
    linear_only = quantize_model(model, 4, 64, embeddings=False)
    assert linear_only.lm_head.weight is linear_only.transformer.embeddings.word.weight  # still tied, float
    assert isinstance(linear_only.transformer.layers[0].ffn.fc1, WeightOnlyLinear)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bits"):
        quantize_weight(torch.randn(4, 64), bits=3)
    with pytest.raises(ValueError, match="divide the 60"):
        quantize_weight(torch.randn(4, 60), group_size=64)


def test_quantization_error_and_byte_count_agree_with_the_stored_weight():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
    qw = quantize_weight(w, 4, 64)
    assert quantization_error(w, 4, 64) == pytest.approx(float((qw.dequantize() - w).norm() / w.norm()), rel=1e-6)
    assert group_quantized_bytes(w.numel(), 4, 64) == qw.nbytes()
    assert group_quantized_bytes(8_000_000_000, 4, 128) == 4_000_000_000 + 62_500_000 * 2
    with pytest.raises(ValueError, match="n_params"):
        group_quantized_bytes(0, 4, 64)
    with pytest.raises(ValueError, match="bits"):
        group_quantized_bytes(100, 3, 64)


def test_fake_int8_matches_the_numpy_reference_per_tensor_and_per_row():
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    a = x.numpy()
    for dim, top in [(None, np.abs(a).max()), (-1, np.abs(a).max(axis=-1, keepdims=True))]:
        s = top / 127
        np.testing.assert_allclose(fake_quantize_int8(x, dim).numpy(), np.clip(np.round(a / s), -127, 127) * s,
                                   rtol=1e-6, atol=1e-7)


def test_activation_statistics_hooks_see_what_each_linear_receives():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    xs = [torch.randn(3, 8), torch.randn(5, 8)]
    stats = linear_input_absmax(model, lambda: [model(x) for x in xs])
    torch.testing.assert_close(stats["0"], torch.cat(xs).abs().amax(dim=0))
    hidden = torch.cat([torch.relu(model[0](x)) for x in xs])
    torch.testing.assert_close(stats["2"], hidden.abs().amax(dim=0))
    torch.testing.assert_close(linear_inputs(model, "2", lambda: [model(x) for x in xs]), hidden.detach())
    assert not model[0]._forward_hooks  # the hooks are removed
    with pytest.raises(ValueError, match="not an nn.Linear"):
        linear_inputs(model, "1", lambda: model(xs[0]))


def test_smoothquant_keeps_the_product_and_rescues_an_outlier_channel():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(200, 64, generator=g), torch.randn(32, 64, generator=g) * 0.1
    x[:, 5] *= 60  # one activation channel far larger than the rest, as in LLMs' residual streams
    s = smoothquant_scales(x.abs().amax(dim=0), w, alpha=0.5)
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-4, atol=1e-4)
    err = w8a8_errors(x, w)
    assert err["weight-only int8"] < err["same, after SmoothQuant"] < err["int8 weights + int8 activations"]
    with pytest.raises(ValueError, match="alpha"):
        smoothquant_scales(x.abs().amax(dim=0), w, alpha=1.5)
    with pytest.raises(ValueError, match="input columns"):
        smoothquant_scales(torch.ones(3), w)
