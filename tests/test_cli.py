import pytest

from bigmodel_course.benchmarks import bench_attention, format_results
from bigmodel_course.cli import main


def test_bench_attention_reports_ratios_to_torch():
    results = bench_attention(batch=2, length=16, width=32, heads=4, rounds=2)
    names = [r.name for r in results]
    assert names == ["torch.nn.MultiheadAttention", "fused MultiHeadAttention", "formula path"]
    assert results[0].ratio == 1.0 and all(r.median_ms > 0 for r in results)
    assert "ratio" in format_results(results, "t")


def test_cli_bench_runs(capsys):
    assert main(["bench", "attention", "--batch", "1", "--length", "8", "--width", "16", "--heads", "2",
                 "--rounds", "1", "--causal"]) == 0
    assert "fused MultiHeadAttention" in capsys.readouterr().out


def test_cli_rejects_bad_sizes(capsys):
    assert main(["bench", "attention", "--heads", "3"]) == 2
    assert "n_heads=3 does not divide d_model=256" in capsys.readouterr().err
    assert main(["bench", "attention", "--rounds", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "nothing"])


def test_bench_gpt_compares_training_steps(capsys):
    from bigmodel_course.benchmarks import bench_gpt

    results = bench_gpt(n_layers=1, width=16, heads=2, context=8, vocab=50, batch=2, rounds=1)
    assert [r.name for r in results] == ["transformers GPT2LMHeadModel", "bigmodel_course GPT"]
    assert main(["bench", "gpt", "--layers", "1", "--width", "16", "--heads", "2", "--context", "8",
                 "--vocab", "50", "--batch", "2", "--rounds", "1"]) == 0
    assert "bigmodel_course GPT" in capsys.readouterr().out
    assert main(["bench", "gpt", "--vocab", "0"]) == 2


def test_cli_pretrain_trains_once_then_reuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    assert main(["pretrain", "--model", "gpt", "--profile", "ci", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pre-trained gpt (ci): 30 steps" in out and "transformers" in out
    assert main(["pretrain", "--model", "gpt", "--profile", "ci"]) == 0
    assert "already pre-trained" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pretrain", "--model", "t5"])


def test_bench_generate_times_the_kv_cache(capsys):
    from bigmodel_course.benchmarks import bench_generate, format_generate

    bench = bench_generate(n_layers=1, width=16, heads=2, vocab=50, prompt_len=3, new_tokens=5, rounds=1)
    assert [r.name for r in bench.results] == ["without KV cache", "with KV cache"]
    assert bench.cache_mb * 2**20 == 2 * 1 * 1 * 7 * 16 * 4  # keys and values of 7 positions (the last is not fed)
    assert "speed-up for 5 new tokens" in format_generate(bench)
    assert bench.speedup.q1 <= bench.speedup.median <= bench.speedup.q3
    three = bench_generate(n_layers=1, width=16, heads=2, vocab=50, prompt_len=3, new_tokens=5, rounds=3)
    assert "round-by-round IQR" in format_generate(three)
    assert main(["bench", "generate", "--layers", "1", "--width", "16", "--heads", "2", "--vocab", "50",
                 "--prompt", "3", "--new-tokens", "5", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and "KV cache speed-up" in out
    assert main(["bench", "generate", "--heads", "3"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "generate", "--new-tokens", "0"])


def test_bench_generate_threads_hold_for_the_benchmark_only(capsys):
    import torch

    before = torch.get_num_threads()
    assert main(["bench", "generate", "--layers", "1", "--width", "16", "--heads", "2", "--vocab", "50",
                 "--prompt", "2", "--new-tokens", "3", "--rounds", "1", "--threads", "1"]) == 0
    assert "(1 threads)" in capsys.readouterr().out and torch.get_num_threads() == before
