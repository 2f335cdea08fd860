"""Group-wise weight-only quantization against a NumPy reference, and on a whole GPT."""

import numpy as np
import pytest
import torch

from bigmodel_course.quantization import (
    WeightOnlyEmbedding,
    WeightOnlyLinear,
    pack_int4,
    quantize_model,
    quantize_weight,
    unpack_int4,
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


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bits"):
        quantize_weight(torch.randn(4, 64), bits=3)
    with pytest.raises(ValueError, match="divide the 60"):
        quantize_weight(torch.randn(4, 60), group_size=64)
