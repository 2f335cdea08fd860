"""The continuous-batching engine against decoding each request alone."""

import pytest
import torch

from bigmodel_course.generation import generate
from bigmodel_course.serving.engine import Engine, SamplingParams, _stop_prefix_length
from bigmodel_course.transformer import GPT, GPTConfig, LlamaConfig

CONFIGS = {
    "gpt2-style": GPTConfig(vocab_size=53, max_len=48, d_model=32, n_heads=4, n_layers=2, dropout=0.0,
                            attn_dropout=0.0),
    "llama-style-gqa": LlamaConfig(vocab_size=53, max_len=48, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2,
                                   d_ff=64),
}


def model_for(name):
    torch.manual_seed(0)
    model = GPT(CONFIGS[name]).eval()
    with torch.no_grad():  # peaked next-token distributions: no near-ties for float rounding to flip
        model.transformer.embeddings.word.weight.mul_(20)
    return model


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 53, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def alone(model, prompt, max_tokens, stop_ids=()):
    out = generate(model, torch.tensor([prompt]), max_new_tokens=max_tokens, stop_ids=stop_ids)[0, len(prompt):]
    reply = []
    for t in out.tolist():
        if t in stop_ids:
            break
        reply.append(t)
    return reply


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_continuous_batching_equals_decoding_each_request_alone(name):
    model = model_for(name)
    engine = Engine(model, max_batch_size=3)
    ps = prompts(8)
    lengths = [3, 9, 5, 14, 2, 7, 11, 4]  # sequences finish at different iterations; new ones join mid-batch
    ids = [engine.submit(p, SamplingParams(max_tokens=n)) for p, n in zip(ps, lengths)]
    replies = {rid: [] for rid in ids}
    most_running = 0
    while engine.has_work():
        for event in engine.step():
            replies[event.request_id].extend(event.tokens)
        most_running = max(most_running, len(engine.running))
    assert most_running == 3
    for rid, p, n in zip(ids, ps, lengths):
        assert replies[rid] == alone(model, p, n)
    assert {s.finish_reason for s in engine.finished} == {"length"}
    assert engine.free == [0, 1, 2] and not engine.running


def test_stop_tokens_end_a_reply_and_are_not_returned():
    model = model_for("gpt2-style")
    ps = prompts(6, seed=1)
    free = [alone(model, p, 12) for p in ps]
    stop = free[0][4]  # a token the first reply produces: it must end there
    replies = Engine(model, max_batch_size=4).run(ps, SamplingParams(max_tokens=12, stop_ids=(stop,)))
    assert replies == [alone(model, p, 12, stop_ids=(stop,)) for p in ps]
    assert replies[0] == free[0][:free[0].index(stop)]


def test_stop_sequences_are_held_back_then_dropped():
    model = model_for("llama-style-gqa")
    p = prompts(1, seed=2)[0]
    free = alone(model, p, 16)
    stop = tuple(free[6:8])
    engine = Engine(model)
    rid = engine.submit(p, SamplingParams(max_tokens=16, stop_sequences=(stop, (52, 52, 52))))
    streamed, reasons = [], []
    while engine.has_work():
        for e in engine.step():
            streamed.append(list(e.tokens))
            reasons.append(e.finish_reason)
    reply = [t for chunk in streamed for t in chunk]
    first = next(i for i in range(len(free) - 1) if tuple(free[i:i + 2]) == stop)
    assert reply == free[:first] and reasons[-1] == "stop" and rid == engine.finished[-1].request_id
    assert _stop_prefix_length([1, 2, 3], ((3, 4), (2, 3, 9))) == 2
    assert _stop_prefix_length([1, 2], ((5, 6),)) == 0


def test_seeded_sampling_does_not_depend_on_the_batch():
    model = model_for("gpt2-style")
    ps = prompts(5, seed=3)
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    one = Engine(model, max_batch_size=1).run(ps, params)
    many = Engine(model, max_batch_size=5).run(ps, params)
    assert one == many
    assert len(set(map(tuple, Engine(model, max_batch_size=5).run([ps[0]] * 3, params)))) == 1


def test_cancel_frees_the_slot_for_the_next_request():
    model = model_for("gpt2-style")
    engine = Engine(model, max_batch_size=1)
    a = engine.submit([1, 2, 3], SamplingParams(max_tokens=30))
    b = engine.submit([4, 5], SamplingParams(max_tokens=3))
    engine.step()
    assert [s.request_id for s in engine.running.values()] == [a]
    event = engine.cancel(a)
    assert event.finish_reason == "cancelled" and engine.free == [0]
    events = engine.step()
    assert [s.request_id for s in engine.running.values()] == [b] and events[0].request_id == b
    assert engine.cancel("nobody") is None


def test_static_batching_waits_for_the_whole_batch():
    model = model_for("gpt2-style")
    engine = Engine(model, max_batch_size=2, policy="static")
    engine.submit([1, 2], SamplingParams(max_tokens=2))
    engine.submit([3, 4], SamplingParams(max_tokens=8))
    late = engine.submit([5, 6], SamplingParams(max_tokens=2))
    for _ in range(3):
        engine.step()
    assert len(engine.running) == 1 and engine.waiting[0].request_id == late  # a slot is free, yet it waits
    continuous = Engine(model, max_batch_size=2)
    for p, n in [([1, 2], 2), ([3, 4], 8), ([5, 6], 2)]:
        continuous.submit(p, SamplingParams(max_tokens=n))
    for _ in range(3):
        continuous.step()
    assert not continuous.waiting


def test_token_budget_limits_what_runs_together():
    model = model_for("gpt2-style")
    engine = Engine(model, max_batch_size=4, max_total_tokens=30)
    for _ in range(4):
        engine.submit([1, 2, 3, 4, 5], SamplingParams(max_tokens=10))  # 15 positions each
    engine.step()
    assert len(engine.running) == 2 and len(engine.waiting) == 2
    while engine.has_work():
        engine.step()
        assert engine._reserved() <= 30


def test_the_context_window_ends_a_reply():
    model = model_for("gpt2-style")
    engine = Engine(model)
    engine.submit(list(range(1, 45)), SamplingParams(max_tokens=20))
    while engine.has_work():
        engine.step()
    seq = engine.finished[-1]
    assert seq.finish_reason == "length" and len(seq.prompt) + len(seq.generated) == 48
    assert seq.ttft > 0 and seq.tpot > 0


def test_bad_requests_are_refused_with_the_reason():
    engine = Engine(model_for("gpt2-style"), max_total_tokens=10)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([])
    with pytest.raises(ValueError, match="context holds 48"):
        engine.submit([1] * 48)
    with pytest.raises(ValueError, match=r"\[0, 53\)"):
        engine.submit([1, 99])
    with pytest.raises(ValueError, match="max_total_tokens=10"):
        engine.submit([1] * 12)
    engine.submit([1], request_id="x")
    with pytest.raises(ValueError, match="already queued"):
        engine.submit([1], request_id="x")
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=3)
    with pytest.raises(ValueError, match="policy"):
        Engine(model_for("gpt2-style"), policy="fifo")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_decode_over_slots_gives_each_sequence_its_own_logits(name):
    torch.manual_seed(0)
    model = GPT(CONFIGS[name]).eval()
    cfg = model.cfg
    from bigmodel_course.serving.engine import SlotKVCache

    cache = SlotKVCache(cfg.n_layers, 3, cfg.n_kv_heads, cfg.max_len, cfg.head_dim)
    cache.k.normal_(), cache.v.normal_()  # stale keys from earlier sequences must stay invisible
    seqs = {0: [5, 6, 7, 8, 9, 10, 11], 2: [12, 13, 14]}
    with torch.no_grad():
        for slot, ids in seqs.items():  # prefill each slot on its own
            model(torch.tensor([ids]), kv_cache=cache.views(torch.tensor([slot])))
            cache.lengths[slot] = len(ids)
        slots = torch.tensor([0, 2])
        logits = model(torch.tensor([[20], [21]]), kv_cache=cache.views(slots)).logits[:, -1]
        for row, (ids, new) in enumerate(zip(seqs.values(), [20, 21])):
            full = model(torch.tensor([ids + [new]])).logits[0, -1]
            torch.testing.assert_close(logits[row], full, atol=1e-5, rtol=0)


def test_benchmark_rows_and_timeline_cover_every_request():
    from bigmodel_course.serving.llm_bench import bench_llm_serve, format_llm_serve, llm_workload, summarise, timeline

    model = model_for("gpt2-style")
    rows = bench_llm_serve(model, (1, 3), requests=5, rounds=2)
    assert len(rows) == 2 * 2 * 3 and all(r.requests == 5 for r in rows)
    work = llm_workload(model, 5)
    assert all(r.tokens == sum(n for _, n in work) for r in rows)  # greedy, no stop: every reply is max_tokens long
    summary = summarise(rows)
    one = [s for s in summary if s["policy"] == "one at a time"]
    assert all(s["speedup"] == (1.0, 1.0, 1.0) for s in one)
    assert "continuous batching" in format_llm_serve(rows)
    cells = timeline(Engine(model, max_batch_size=3), work, 3)
    assert {i for _, _, i in cells} == set(range(5)) and {slot for _, slot, _ in cells} <= {0, 1, 2}
    per_step = {}
    for step, slot, i in cells:
        per_step.setdefault(step, set()).add(slot)
    assert max(len(v) for v in per_step.values()) == 3
