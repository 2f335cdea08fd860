import pytest
import torch

from bigmodel_course.long_context import extend_context
from bigmodel_course.transformer import GPT, GPTConfig

pytestmark = pytest.mark.unit


def test_extend_context_keeps_the_model_on_its_old_positions():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=2, n_layers=1, dropout=0.0, attn_dropout=0.0)
    model = GPT(cfg).eval()
    grown = extend_context(model, 40).eval()
    x = torch.randint(0, 50, (2, 16))
    assert torch.allclose(model(x).logits, grown(x).logits, atol=1e-6)
    assert grown(torch.randint(0, 50, (1, 40))).logits.shape == (1, 40, 50)
    pos = grown.transformer.embeddings.position.embedding.weight
    assert torch.equal(pos[16:32], pos[:16]) and torch.equal(pos[32:40], pos[:8])
    with pytest.raises(ValueError, match="shorter"):
        extend_context(model, 8)


def test_extend_context_needs_learned_positions():
    cfg = GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=2, n_layers=1, position="rotary")
    with pytest.raises(ValueError, match="learned positions"):
        extend_context(GPT(cfg), 32)
