import pytest
import torch
import torch.nn.functional as F

from bigmodel_course.attention import (
    KVCache,
    MultiHeadAttention,
    build_attention_mask,
    causal_mask,
    fused_attention,
    scaled_dot_product_attention,
)


def qkv(B=2, H=3, L=5, S=5, d=8, dtype=torch.float32):
    return (torch.randn(B, H, L, d, dtype=dtype), torch.randn(B, H, S, d, dtype=dtype),
            torch.randn(B, H, S, d, dtype=dtype))


def padding():
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return mask


def test_formula_equals_torch_sdpa_without_mask():
    q, k, v = qkv(S=7)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-6, rtol=0)


def test_formula_equals_torch_sdpa_causal():
    q, k, v = qkv()
    ours = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=0)


def test_formula_equals_torch_sdpa_padding():
    q, k, v = qkv()
    pad = padding()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=pad[:, None, None, :])
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, key_padding_mask=pad), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(fused_attention(q, k, v, key_padding_mask=pad), ref, atol=1e-6, rtol=0)


def test_formula_and_fused_agree_with_every_mask_combined():
    q, k, v = qkv()
    extra = torch.rand(5, 5) > 0.3
    args = dict(attn_mask=extra, key_padding_mask=padding(), is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, **args), fused_attention(q, k, v, **args),
                               atol=1e-6, rtol=0)


def test_weights_are_rows_summing_to_one_and_respect_causality():
    q, k, v = qkv()
    _, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    assert torch.all(w.triu(diagonal=1) == 0)


def test_fully_masked_rows_give_finite_output():
    q, k, v = qkv()
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 0] = True
    for fn in (scaled_dot_product_attention, fused_attention):
        assert torch.isfinite(fn(q, k, v, key_padding_mask=pad, is_causal=True)).all()


def test_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in qkv(B=1, H=2, L=4, S=4, d=3, dtype=torch.float64))
    pad = torch.tensor([[True, True, True, False]])
    assert torch.autograd.gradcheck(
        lambda a, b, c: scaled_dot_product_attention(a, b, c, key_padding_mask=pad, is_causal=True), (q, k, v)
    )


def test_causal_mask_with_offset_matches_cached_positions():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]
    with pytest.raises(ValueError, match="q_len=3, k_len=2"):
        causal_mask(3, 2)


def copy_to_torch_mha(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("fused", [True, False])
def test_mha_equals_torch_multihead_attention_self_causal_padding(fused):
    ours = MultiHeadAttention(16, 4, fused=fused).eval()
    ref = copy_to_torch_mha(ours)
    x = torch.randn(2, 5, 16)
    pad = padding()
    causal = causal_mask(5, 5)
    out, _ = ours(x, padding_mask=pad, is_causal=True)
    # torch's masks are True where attention is *not* allowed
    expected, _ = ref(x, x, x, key_padding_mask=~pad, attn_mask=~causal, need_weights=False)
    valid = pad  # rows of padding queries may differ (both are arbitrary); compare real tokens
    torch.testing.assert_close(out[valid], expected[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_mha_padding_mask_and_attn_mask_combine_like_torch(fused):
    ours = MultiHeadAttention(16, 4, fused=fused).eval()
    ref = copy_to_torch_mha(ours)
    x, pad = torch.randn(2, 5, 16), padding()
    allowed = (torch.rand(5, 5) > 0.3) | torch.eye(5, dtype=torch.bool)  # every query sees at least itself
    out, _ = ours(x, padding_mask=pad.long(), attn_mask=allowed)  # 1/0 padding masks work like True/False
    expected, _ = ref(x, x, x, key_padding_mask=~pad, attn_mask=~allowed, need_weights=False)
    valid = pad & (allowed.unsqueeze(0) & pad.unsqueeze(1)).any(-1)  # real queries that see a real key
    torch.testing.assert_close(out[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_mha_masks_are_keyword_only_with_clear_errors():
    mha, x = MultiHeadAttention(16, 4), torch.randn(2, 5, 16)
    with pytest.raises(TypeError):
        mha(x, None, padding())  # positional masks are refused: padding_mask and attn_mask are easy to swap
    with pytest.raises(TypeError, match="attention_mask"):
        mha(x, attention_mask=padding())  # the old name
    with pytest.raises(ValueError, match=r"padding mask has shape \(2, 4\); expected \(batch=2, keys=5\)"):
        mha(x, padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must be a bool tensor"):
        mha(x, attn_mask=torch.zeros(5, 5))


def test_mha_cross_attention_equals_torch():
    ours = MultiHeadAttention(16, 2).eval()
    ref = copy_to_torch_mha(ours)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    out, w = ours(x, memory, return_weights=True)
    expected, ref_w = ref(x, memory, memory, average_attn_weights=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)


def test_kv_cache_token_by_token_equals_full_pass():
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full, _ = mha(x, is_causal=True)
    cache, steps = KVCache(), []
    for t in range(6):
        out, _ = mha(x[:, t : t + 1], is_causal=True, kv_cache=cache)
        steps.append(out)
    assert len(cache) == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_head_count_must_divide_width():
    with pytest.raises(ValueError, match="n_heads=3 does not divide d_model=16"):
        MultiHeadAttention(16, 3)


def test_mask_of_wrong_shape_is_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"padding mask has shape \(2, 4\); expected \(batch=2, keys=5\)"):
        scaled_dot_product_attention(q, k, v, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask has shape \(4, 5\); expected \(\.\.\., 5, 5\)"):
        fused_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be a bool tensor"):
        build_attention_mask(q, k, attn_mask=torch.ones(5, 5))


def test_mha_rejects_wrong_input_width():
    with pytest.raises(ValueError, match=r"query must be \(batch, length, 16\), got \(2, 5, 8\)"):
        MultiHeadAttention(16, 4)(torch.randn(2, 5, 8))


def test_mismatched_qkv_are_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="query width 8 differs from key width 4"):
        scaled_dot_product_attention(q, k[..., :4], v)


@pytest.mark.parametrize("q_len", [1, 3])
def test_fused_causal_queries_after_cached_keys_equal_the_formula(q_len):
    q, k, v = qkv(L=q_len, S=9)  # the last q_len of 9 positions, as in KV-cached decoding
    torch.testing.assert_close(fused_attention(q, k, v, is_causal=True),
                               scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6, rtol=0)
