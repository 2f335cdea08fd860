import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bigmodel_course.generation import (
    GenerationConfig,
    apply_repetition_penalty,
    filter_logits,
    generate,
)
from bigmodel_course.interop import gpt_from_hf
from bigmodel_course.transformer import GPT, GPTConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=60, max_len=40, d_model=32, n_heads=4, n_layers=2, dropout=0.1)).eval()


def test_kv_cached_greedy_equals_uncached(model):
    prompt = torch.randint(0, 60, (3, 5))
    cached = generate(model, prompt, max_new_tokens=30)
    plain = generate(model, prompt, max_new_tokens=30, use_cache=False)
    assert cached.shape == (3, 35) and torch.equal(cached, plain)
    assert torch.equal(cached[:, :5], prompt)


def test_greedy_matches_transformers_generate():
    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=None, eos_token_id=None, pad_token_id=0)).eval()
    prompt = torch.randint(1, 60, (2, 4))
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    assert torch.equal(generate(gpt_from_hf(hf), prompt, max_new_tokens=20), ref)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model):
    prompt = torch.randint(0, 60, (2, 3))
    a = generate(model, prompt, max_new_tokens=15, do_sample=True, temperature=1.5, seed=7)
    b = generate(model, prompt, max_new_tokens=15, do_sample=True, temperature=1.5, seed=7)
    assert torch.equal(a, b)
    greedy = generate(model, prompt, max_new_tokens=15)
    assert torch.equal(generate(model, prompt, max_new_tokens=15, do_sample=True, top_k=1, seed=3), greedy)


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()

    def kept(out):
        return torch.isfinite(out[0]).nonzero().flatten().tolist()

    assert kept(filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.5)) == [0]
    assert kept(filter_logits(logits, top_p=0.7)) == [0, 1]      # 0.5 + 0.2 reaches 0.7
    assert kept(filter_logits(logits, top_p=0.71)) == [0, 1, 2]
    assert kept(filter_logits(logits[:, [3, 0, 4, 1, 2]], top_p=0.8)) == [1, 3, 4]  # order does not matter
    assert kept(filter_logits(logits, top_k=3, top_p=0.6)) == [0, 1]


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def _random_logits(rows=64, vocab=50, seed=0):
    """Logits at three scales (flat, typical, peaked), float32 like the logits `generate` filters."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(rows, vocab, generator=g) * s for s in (0.5, 2.0, 8.0)])


@pytest.mark.parametrize("top_k", [1, 3, 50, 80])
def test_top_k_equals_transformers_top_k_warper(top_k):
    logits = _random_logits()
    assert torch.equal(filter_logits(logits, top_k=top_k), TopKLogitsWarper(top_k)(None, logits))


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.99, 0.99999, 0.999999])
def test_top_p_equals_transformers_top_p_warper(top_p):
    """Same kept tokens and values; top_p near 1 needs the tail mass summed from the smallest probability."""
    logits = _random_logits()
    assert torch.equal(filter_logits(logits, top_p=top_p), TopPLogitsWarper(top_p)(None, logits))


def test_ties_keep_the_same_number_of_tokens_as_transformers():
    """Top-k keeps every token tied with the k-th (as transformers does). Top-p keeps as many tied tokens as
    transformers; which of the tied ones survive is up to the sort, so only the count and the mass are compared."""
    tied = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert torch.equal(filter_logits(tied, top_k=2), TopKLogitsWarper(2)(None, tied))
    assert torch.isfinite(filter_logits(tied, top_k=2)).sum() == 3
    uniform = torch.zeros(3, 8)
    for top_p in (0.3, 0.5, 0.99):
        ours, ref = filter_logits(uniform, top_p=top_p), TopPLogitsWarper(top_p)(None, uniform)
        assert torch.equal(torch.isfinite(ours).sum(-1), torch.isfinite(ref).sum(-1))
        torch.testing.assert_close(torch.softmax(ours, -1).max(-1).values, torch.softmax(ref, -1).max(-1).values)


def test_top_p_1_and_already_filtered_logits_agree_with_transformers():
    """top_p=1 filters nothing; -inf logits (e.g. after top-k) stay -inf and carry no probability."""
    logits = filter_logits(_random_logits(rows=8), top_k=5)
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    assert torch.equal(filter_logits(logits, top_p=1.0), TopPLogitsWarper(1.0)(None, logits))
    assert torch.equal(filter_logits(logits, top_p=0.9), TopPLogitsWarper(0.9)(None, logits))


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers_processor(penalty):
    """Repeated ids, negative, positive and zero logits: the same CTRL rule as transformers."""
    logits = _random_logits(rows=4, vocab=20)
    logits[:, 7] = 0.0
    previous = torch.randint(0, 20, (12, 15), generator=torch.Generator().manual_seed(1))
    previous[:, :3] = 7  # a token seen several times is penalised once
    ref = RepetitionPenaltyLogitsProcessor(penalty)(previous, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, previous, penalty), ref, atol=0, rtol=0)


def test_sampling_pipeline_equals_transformers_logits_processors():
    """Penalty, then temperature, top-k and top-p, in the order transformers' generate applies them."""
    logits = _random_logits(rows=8)
    previous = torch.randint(0, 50, (24, 10), generator=torch.Generator().manual_seed(2))
    ref = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.7),
                               TopKLogitsWarper(10), TopPLogitsWarper(0.8)])(previous, logits.clone())
    ours = filter_logits(apply_repetition_penalty(logits, previous, 1.2) / 0.7, top_k=10, top_p=0.8)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))


def test_stop_tokens_end_a_row_and_pad_it(model):
    prompt = torch.randint(0, 60, (2, 3))
    free = generate(model, prompt, max_new_tokens=12)
    stop = int(free[0, 5])  # the token row 0 produces at its third step
    out = generate(model, prompt, max_new_tokens=12, stop_ids=[stop])
    row = out[0, 3:].tolist()
    first = row.index(stop)
    assert all(t == model.cfg.pad_token_id for t in row[first + 1:])


def test_sliding_window_without_cache_and_errors(model):
    prompt = torch.randint(0, 60, (1, 38))
    assert generate(model, prompt, max_new_tokens=5, use_cache=False).shape == (1, 43)
    with pytest.raises(ValueError, match=r"38 \+ 5 new tokens exceeds the context max_len=40"):
        generate(model, prompt, max_new_tokens=5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GenerationConfig(temperature=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(model, prompt[:, :3], top_p=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long))


def test_generate_restores_training_mode(model):
    model.train()
    generate(model, torch.randint(0, 60, (1, 3)), max_new_tokens=2)
    assert model.training


def test_distinct_n_and_repeated_ngram_rate_by_hand():
    from bigmodel_course.generation import distinct_n, repeated_ngram_rate

    samples = ["好好好", "好的"]  # unigrams 好 好 好 好 的: 2 unique of 5; bigrams 好好 好好 好的: 2 of 3
    assert distinct_n(samples, 1) == pytest.approx(2 / 5) and distinct_n(samples, 2) == pytest.approx(2 / 3)
    assert repeated_ngram_rate("abcabc", 3) == pytest.approx(1 / 4)  # abc bca cab abc: the last repeats
    assert repeated_ngram_rate("ab", 3) == 0.0 and distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["ab"], 0)


def test_continuation_logprobs_match_a_manual_loop(model):
    from bigmodel_course.generation import continuation_logprobs

    ids = generate(model, torch.randint(1, 60, (2, 4)), max_new_tokens=6, do_sample=True, seed=0)
    ids[1, -2:] = model.cfg.pad_token_id  # a stopped row: its pads do not count
    got = continuation_logprobs(model, ids, prompt_len=4)
    for row, n in ((0, 10), (1, 8)):
        logps = [torch.log_softmax(model(ids[row:row + 1, :t]).logits[0, -1], -1)[ids[row, t]] for t in range(4, n)]
        assert got[row].item() == pytest.approx(torch.stack(logps).mean().item(), abs=1e-5)
    with pytest.raises(ValueError, match="prompt_len"):
        continuation_logprobs(model, ids, prompt_len=0)


def test_kv_cache_bytes_formula_equals_the_tensors(model):
    from bigmodel_course.generation import cache_nbytes, kv_cache_bytes

    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 60, (3, 7)), kv_cache=cache)
        model(torch.randint(0, 60, (3, 1)), kv_cache=cache)
    cfg = model.cfg
    assert cache_nbytes(cache) == kv_cache_bytes(cfg.n_layers, 3, 8, cfg.d_model) == 2 * 2 * 3 * 8 * 32 * 4
