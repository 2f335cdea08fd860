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
