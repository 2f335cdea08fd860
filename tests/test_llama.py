"""Today's decoder architecture: grouped-query attention, a Llama-style GPT against `transformers`' Llama, and a
mixture-of-experts feed-forward against a dense reference."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from bigmodel_course.attention import KVCache, MultiHeadAttention, repeat_kv
from bigmodel_course.generation import generate
from bigmodel_course.interop import llama_from_hf, llama_to_hf
from bigmodel_course.transformer import GPT, LlamaConfig, MoEFeedForward, active_parameters, parameter_breakdown
from bigmodel_course.utils import count_parameters


def llama(**kw):
    base = dict(vocab_size=61, max_len=32, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=48)
    return LlamaConfig(**{**base, **kw})


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("fused", [True, False])
def test_grouped_query_attention_matches_sdpa_with_repeated_heads(n_kv_heads, fused):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads, bias=False, fused=fused).eval()
    x = torch.randn(2, 7, 32)
    q, k, v = (attn.in_proj(x).split([32, 8 * n_kv_heads, 8 * n_kv_heads], dim=-1))
    q = q.view(2, 7, 4, 8).transpose(1, 2)
    k, v = (t.view(2, 7, n_kv_heads, 8).transpose(1, 2) for t in (k, v))
    group = 4 // n_kv_heads  # query head h reads key/value head h // group
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 32)
    out, _ = attn(x, is_causal=True)
    torch.testing.assert_close(out, attn.out_proj(expected), atol=1e-6, rtol=0)


def test_kv_cache_holds_only_the_key_value_heads():
    attn = MultiHeadAttention(32, 4, n_kv_heads=1).eval()
    cache = KVCache()
    attn(torch.randn(3, 5, 32), is_causal=True, kv_cache=cache)
    assert tuple(cache.k.shape) == (3, 1, 5, 8) and tuple(cache.v.shape) == (3, 1, 5, 8)
    assert attn.in_proj.weight.shape == (32 + 2 * 8, 32)
    assert tuple(repeat_kv(cache.k, 4).shape) == (3, 4, 5, 8)


def test_bad_head_counts_are_refused():
    with pytest.raises(ValueError, match="n_kv_heads=3 does not divide n_heads=4"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_kv_heads=3 does not divide n_heads=4"):
        llama(n_kv_heads=3)
    with pytest.raises(ValueError, match="experts_per_token"):
        llama(n_experts=2, experts_per_token=3)


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 4}, {"tie_word_embeddings": True}, {"n_experts": 4},
                                {"n_experts": 3, "experts_per_token": 1, "bias": True, "norm": "layer"}])
def test_parameter_breakdown_counts_llama_style_models(kw):
    cfg = llama(**kw)
    assert parameter_breakdown(cfg)["total"] == count_parameters(GPT(cfg))


@pytest.fixture
def hf_llama():
    torch.manual_seed(0)
    cfg = HFLlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # RMSNorm scales start at 1: move them so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def test_llama_from_hf_gives_the_same_logits_and_cached_greedy_generation(hf_llama):
    ours = llama_from_hf(hf_llama).eval()
    assert ours.cfg.n_kv_heads == 2 and ours.cfg.rope_base == 500.0
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf_llama(ids).logits, atol=1e-4, rtol=0)
        expected = hf_llama.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    assert torch.equal(generate(ours, ids, max_new_tokens=12, use_cache=True), expected)


@pytest.mark.parametrize("tie", [False, True])
def test_our_llama_round_trips_through_transformers(tie):
    torch.manual_seed(0)
    ours = GPT(llama(tie_word_embeddings=tie)).eval()
    hf = llama_to_hf(ours)
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)
        back = llama_from_hf(hf).eval()
        torch.testing.assert_close(back(ids).logits, ours(ids).logits, atol=1e-6, rtol=0)
    assert (hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()) == tie


def test_llama_conversion_refuses_what_it_cannot_express():
    from bigmodel_course.transformer import GPTConfig

    with pytest.raises(ValueError, match="RMSNorm, SwiGLU"):
        llama_to_hf(GPT(GPTConfig(vocab_size=61, max_len=32, d_model=32, n_heads=4, n_layers=1)))
    with pytest.raises(ValueError, match="no experts"):
        llama_to_hf(GPT(llama(n_experts=2)))
    from bigmodel_course.interop import gpt_to_hf

    with pytest.raises(ValueError, match="llama_to_hf"):
        gpt_to_hf(GPT(GPTConfig(vocab_size=61, max_len=32, d_model=32, n_heads=4, n_kv_heads=2, n_layers=1)))


def dense_reference(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token; the top-k softmax weights, zero elsewhere."""
    flat = x.reshape(-1, x.shape[-1])
    logits = moe.router(flat)
    top = logits.topk(moe.k, dim=-1)
    weights = torch.zeros_like(logits).scatter(1, top.indices, top.values.softmax(dim=-1))
    every = torch.stack([expert(flat) for expert in moe.experts], dim=1)  # (N, E, d)
    return (weights.unsqueeze(-1) * every).sum(dim=1).view_as(x)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_mixture_of_experts_matches_a_dense_masked_reference(k):
    torch.manual_seed(0)
    moe = MoEFeedForward(llama(n_experts=4, experts_per_token=k)).eval()
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(moe(x), dense_reference(moe, x), atol=1e-6, rtol=0)
    assert moe.aux_loss.item() >= 1.0 - 1e-6  # n · Σ f_i P_i is 1 at an even load, more when it is uneven


def test_load_balancing_loss_is_one_when_even_and_grows_with_imbalance():
    moe = MoEFeedForward(llama(n_experts=4, experts_per_token=1))
    x = torch.randn(8, 32)
    with torch.no_grad():
        moe.router.weight.zero_()  # equal probabilities; top-1 ties go to expert 0
    moe(x)
    assert moe.aux_loss.item() == pytest.approx(1.0)  # P_i = 1/4 everywhere, whatever f is
    with torch.no_grad():
        moe.router.weight.normal_()
        moe.router.weight[0] += 100 * x.mean(dim=0)  # expert 0 wins for (nearly) every token
    moe(x)
    assert moe.aux_loss.item() > 2.0


def test_moe_gpt_trains_with_the_auxiliary_loss():
    torch.manual_seed(0)
    model = GPT(llama(n_experts=4))
    ids = torch.randint(0, 61, (2, 10))
    out = model(ids, labels=ids)
    lm = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, lm + 0.01 * out.aux_loss)
    out.loss.backward()
    assert model.transformer.layers[0].ffn.router.weight.grad.abs().sum() > 0


def test_active_parameters_count_only_the_chosen_experts():
    dense, moe = llama(), llama(n_experts=8, experts_per_token=2)
    assert active_parameters(dense) == parameter_breakdown(dense)["total"]
    one_ffn = 3 * 32 * 48
    assert parameter_breakdown(moe)["total"] - active_parameters(moe) == 2 * 6 * one_ffn
    model = GPT(moe).eval()
    used = set()
    hooks = [e.register_forward_hook(lambda m, i, o: used.add(id(m))) for e in model.transformer.layers[0].ffn.experts]
    with torch.no_grad():
        model(torch.randint(0, 61, (1, 1)))  # one token: exactly two experts of the layer run
    assert len(used) == 2
    for h in hooks:
        h.remove()
