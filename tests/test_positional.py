import math

import pytest
import torch

from bigmodel_course.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)


def test_sinusoidal_table_matches_the_paper_formula():
    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    angle = pos / 10000 ** (2 * i / 16)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_position_lookup_and_length_error():
    enc = SinusoidalPositionalEncoding(10, 8)
    torch.testing.assert_close(enc(3, offset=2), sinusoidal_table(10, 8)[2:5])
    with pytest.raises(ValueError, match="needs 12 positions, but the position table holds max_len=10"):
        enc(4, offset=8)
    with pytest.raises(ValueError, match="max_len=4"):
        LearnedPositionalEmbedding(4, 8)(5)


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    s1 = (rope(q, offset=5) * rope(k, offset=2)).sum()
    s2 = (rope(q, offset=20) * rope(k, offset=17)).sum()
    assert s1.item() == pytest.approx(s2.item(), abs=1e-5)
    torch.testing.assert_close(rope(q, offset=0), q)  # position 0 is the identity rotation
    torch.testing.assert_close(rope(q, offset=9).norm(), q.norm())  # rotations keep length


def test_odd_widths_are_rejected():
    with pytest.raises(ValueError, match="even d_model"):
        sinusoidal_table(4, 7)
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(5, 4)


def test_rotary_equals_the_complex_closed_form_on_interleaved_pairs():
    """RoPE as complex multiplication: pair (x_2j, x_2j+1) is z_j = x_2j + i x_2j+1, rotated by e^{i m θ_j}."""
    head_dim, T, offset, base = 16, 7, 3, 10000.0
    rope = RotaryEmbedding(head_dim, 32, base=base)
    x = torch.randn(2, 3, T, head_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    m = torch.arange(offset, offset + T, dtype=torch.float64)
    rotation = torch.polar(torch.ones(T, head_dim // 2, dtype=torch.float64), torch.outer(m, theta))
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], head_dim // 2, 2).contiguous())  # interleaved pairs
    expected = torch.view_as_real(z * rotation).flatten(-2)
    torch.testing.assert_close(rope(x.float(), offset=offset), expected.float(), atol=1e-5, rtol=1e-5)


def test_rotary_uses_the_interleaved_convention_not_the_half_split_one():
    """Ours pairs features (2j, 2j+1); Llama in transformers pairs (j, j + d/2). They agree up to a permutation."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim, T = 8, 5
    rope = RotaryEmbedding(head_dim, 16)
    x = torch.randn(1, 2, T, head_dim, generator=torch.Generator().manual_seed(1))
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat([angles, angles], dim=-1)[None]  # Llama's layout: (batch, T, head_dim)
    cos, sin = emb.cos().float(), emb.sin().float()
    half_split, _ = apply_rotary_pos_emb(x, x, cos, sin)
    perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # evens first, then odds
    inverse = torch.argsort(perm)
    assert not torch.allclose(rope(x), half_split, atol=1e-3)  # the two conventions differ on the same input ...
    via_llama, _ = apply_rotary_pos_emb(x[..., perm], x[..., perm], cos, sin)
    torch.testing.assert_close(rope(x), via_llama[..., inverse], atol=1e-5, rtol=1e-5)  # ... up to this permutation
