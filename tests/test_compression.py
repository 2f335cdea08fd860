import math

import pytest
import torch
import torch.nn.functional as F

from bigmodel_course.benchmarks import CompressionRow, format_compression, latency_batches
from bigmodel_course.compression import (
    DISTILL_SPECS,
    DistillationModel,
    Int8Embedding,
    classifier_accuracy,
    classifier_logits,
    distillation_loss,
    ffn_neuron_scores,
    file_size_mb,
    is_int8,
    kept_neurons,
    load_int8,
    load_student,
    magnitude_amount_for_share,
    magnitude_prune,
    prunable_linears,
    prune_ffn_neurons,
    pruned_share,
    quantize_int8,
    save_weights,
    student_config,
    student_dir,
    weight_sparsity,
)
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPTConfig, GPTForSequenceClassification


def tiny_gpt(seed: int = 0, **overrides) -> GPTForSequenceClassification:
    torch.manual_seed(seed)
    cfg = GPTConfig(**{"vocab_size": 50, "max_len": 16, "d_model": 32, "n_heads": 4, "n_layers": 2, "dropout": 0.0,
                       "attn_dropout": 0.0, **overrides})
    return GPTForSequenceClassification(cfg).eval()


def ids(batch: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(1, 50, (batch, length), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ pruning

@pytest.mark.parametrize("amount", [0.0, 0.3, 0.75])
def test_magnitude_prune_reaches_sparsity_and_zeroes_the_smallest_weights(amount):
    model = tiny_gpt()
    pruned = magnitude_prune(model, amount)
    assert weight_sparsity(model) == 0.0  # the original is untouched
    assert weight_sparsity(pruned) == pytest.approx(amount, abs=2e-3)
    for (name, before), (_, after) in zip(prunable_linears(model), prunable_linears(pruned)):
        w, p = before.weight.detach().abs().flatten(), after.weight.detach().flatten()
        k = round(amount * w.numel())
        smallest = w.argsort()[:k]
        assert torch.all(p[smallest] == 0), name
        kept = p != 0
        assert int(kept.sum()) == w.numel() - k
        assert torch.equal(p[kept], before.weight.detach().flatten()[kept])  # the rest is unchanged
        assert not hasattr(after, "weight_mask") and not hasattr(after, "weight_orig")  # permanent


def test_magnitude_prune_rejects_bad_amounts():
    with pytest.raises(ValueError, match=r"amount must be in \[0, 1\), got 1.5"):
        magnitude_prune(tiny_gpt(), 1.5)
    with pytest.raises(ValueError, match="no Linear layers inside Transformer blocks"):
        prunable_linears(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_ffn_pruning_shrinks_matrices_and_equals_the_masked_original():
    model = tiny_gpt()
    pruned = prune_ffn_neurons(model, keep=0.25)
    assert pruned.cfg.d_ff == 32 and model.cfg.d_ff == 128
    assert all(layer.ffn.fc1.weight.shape == (32, 32) and layer.ffn.fc2.weight.shape == (32, 32)
               for layer in pruned.transformer.layers)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # independent reference: zero the pruned neurons' weights in place in the full-size model
    masked = tiny_gpt()
    for layer, scores in zip(masked.transformer.layers, ffn_neuron_scores(masked)):
        drop = scores.argsort()[: 128 - 32]
        with torch.no_grad():
            layer.ffn.fc1.weight[drop] = 0
            layer.ffn.fc1.bias[drop] = 0
            layer.ffn.fc2.weight[:, drop] = 0
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, masked(x).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x).logits, masked(x).logits)  # pruning did change the function
    rebuilt = GPTForSequenceClassification(pruned.cfg)  # the new config describes the pruned shapes
    rebuilt.load_state_dict(pruned.state_dict())


@pytest.mark.parametrize("keep", [0.75, 0.5, 0.25])
def test_magnitude_pruning_can_match_the_share_removed_by_ffn_pruning(keep):
    """Equal shares: the unstructured twin zeroes as many parameters as the structured pruning deletes."""
    model = tiny_gpt()
    structured = prune_ffn_neurons(model, keep)
    n = sum(p.numel() for p in model.parameters())
    removed = n - sum(p.numel() for p in structured.parameters())
    assert pruned_share(model, structured) == pytest.approx(removed / n)
    twin = magnitude_prune(model, magnitude_amount_for_share(model, removed / n))
    zeroed = sum(int((layer.weight == 0).sum()) for _, layer in prunable_linears(twin))
    assert zeroed == pytest.approx(removed, rel=0.01)  # per-layer rounding only
    assert pruned_share(model, twin) == pytest.approx(removed / n, rel=0.01)
    assert pruned_share(model, model) == 0.0
    with pytest.raises(ValueError, match="must be in"):
        magnitude_amount_for_share(model, 0.9)  # more than all the block Linear weights


def test_kept_neurons_are_the_highest_scoring():
    model = tiny_gpt()
    for idx, scores in zip(kept_neurons(model, 0.5), ffn_neuron_scores(model)):
        assert len(idx) == 64 and torch.all(idx[1:] > idx[:-1])
        assert scores[idx].min() >= scores[~torch.isin(torch.arange(128), idx)].max()
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got 0"):
        kept_neurons(model, 0)


# ------------------------------------------------------------------ quantization

def test_int8_embedding_rows_round_trip_within_half_a_step():
    emb = torch.nn.Embedding(20, 8)
    q = Int8Embedding.from_float(emb)
    step = emb.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    assert q.weight.dtype == torch.int8
    assert torch.all((q.dequantize() - emb.weight.detach()).abs() <= step / 2 + 1e-7)
    x = torch.tensor([[3, 0], [19, 3]])
    torch.testing.assert_close(q(x), q.dequantize()[x])


def test_int8_model_logits_are_close_to_float():
    model = tiny_gpt()
    q = quantize_int8(model)
    assert is_int8(q) and not is_int8(model)
    assert isinstance(q.transformer.embeddings.word, Int8Embedding)
    x = ids(8)
    with torch.no_grad():
        ref, out = model(x).logits, q(x).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_saved_int8_file_is_smaller_and_loads_back(tmp_path):
    model = tiny_gpt(d_model=64, vocab_size=2000)
    q = quantize_int8(model)
    fp = save_weights(model, tmp_path / "fp32.safetensors")
    i8 = save_weights(q, tmp_path / "int8.safetensors")
    assert file_size_mb(fp) == pytest.approx(fp.stat().st_size / 1e6)
    n_float = sum(p.numel() for p in model.parameters())
    assert file_size_mb(fp) == pytest.approx(4 * n_float / 1e6, rel=0.02)
    assert file_size_mb(fp) / file_size_mb(i8) > 3.3
    loaded = load_int8(tiny_gpt(seed=5, d_model=64, vocab_size=2000), i8)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, q(x).logits)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_int8(tiny_gpt(d_model=64, vocab_size=2000, n_layers=3), i8)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        file_size_mb(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------ distillation

def test_distillation_loss_equals_a_hand_computed_value():
    s = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([[2.0, 0.0]])
    T, alpha = 2.0, 0.3
    ps = [math.exp(0.5) / (math.exp(0.5) + math.exp(0.25)), math.exp(0.25) / (math.exp(0.5) + math.exp(0.25))]
    pt = [math.exp(1.0) / (math.exp(1.0) + 1.0), 1.0 / (math.exp(1.0) + 1.0)]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert kl > 0.01  # the soft distributions really differ
    ce = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.5)))  # label 0
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = distillation_loss(s, t, torch.tensor([0]), temperature=T, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(s, t, torch.tensor([0]), T, alpha=0.0)) == pytest.approx(ce, rel=1e-6)


def test_distillation_loss_has_zero_gradient_when_student_matches_teacher():
    t = torch.randn(4, 3)
    s = t.clone().requires_grad_(True)
    loss = distillation_loss(s, t, temperature=3.0, alpha=1.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max() < 1e-6
    s2 = (t + 1.0 * torch.tensor([1.0, 0.0, 0.0])).requires_grad_(True)
    distillation_loss(s2, t, temperature=3.0, alpha=1.0).backward()
    assert s2.grad.abs().max() > 1e-3  # and a real gradient when they differ


def test_distillation_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels are needed"):
        distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), None, alpha=0.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), None, temperature=0, alpha=1.0)


def test_distillation_model_uses_teacher_logits_only_when_given():
    student = tiny_gpt()
    wrapped = DistillationModel(student, temperature=2.0, alpha=0.5)
    x, y = ids(), torch.tensor([0, 1, 1])
    t = torch.randn(3, 2)
    with torch.no_grad():
        plain = wrapped(x, labels=y)
        assert float(plain.loss) == pytest.approx(float(F.cross_entropy(plain.logits, y)))
        out = wrapped(x, labels=y, teacher_logits=t)
        assert float(out.loss) == pytest.approx(float(distillation_loss(out.logits, t, y, 2.0, 0.5)))


def test_student_is_smaller_than_the_teacher(tmp_path):
    teacher = tiny_gpt(d_model=64, n_layers=4)
    cfg = student_config(teacher.cfg, DISTILL_SPECS["full"])
    assert (cfg.n_layers, cfg.d_model, cfg.d_ff) == (2, 64, 256) and cfg.vocab_size == teacher.cfg.vocab_size
    assert student_dir("distilled", "ci", tmp_path) == tmp_path / "distilled-ci"
    assert student_dir("control", "full", tmp_path, seed=2) == tmp_path / "control-full-seed2"
    assert DISTILL_SPECS["full"].seeds == (0, 1, 2, 3, 4) and DISTILL_SPECS["ci"].seeds == (0,)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        student_dir("control", "ci", tmp_path, seed=-1)
    with pytest.raises(ValueError, match="unknown student 'big'"):
        student_dir("big", "ci", tmp_path)


def test_classifier_logits_and_accuracy():
    tok = CharTokenizer.train(["好差一二三四五六"], min_freq=1)
    model = GPTForSequenceClassification(GPTConfig(vocab_size=len(tok), max_len=16, d_model=16, n_heads=2,
                                                   n_layers=1)).eval()
    texts = ["好", "差差", "一二三"]
    logits = classifier_logits(model, tok, texts, 16)
    assert logits.shape == (3, 2)
    labels = logits.argmax(-1).tolist()
    assert classifier_accuracy(model, tok, texts, labels, 16) == 1.0


def test_latency_batches_and_table_format():
    tok = CharTokenizer.train(["好差一二三四五六"], min_freq=1)
    texts = ["好" * n for n in range(1, 41)]
    batches = latency_batches(tok, texts, max_len=16, batch_size=32)
    assert batches["batch1"]["input_ids"].shape[0] == 1 and batches["batch32"]["input_ids"].shape[0] == 32
    assert "labels" not in batches["batch1"]
    with pytest.raises(ValueError, match="need at least 32 texts"):
        latency_batches(tok, texts[:5], 16)
    single = latency_batches(tok, texts, max_len=16, batch_size=1)       # the median text, not a random one
    assert list(single) == ["batch1"] and torch.equal(single["batch1"]["input_ids"], batches["batch1"]["input_ids"])
    with pytest.raises(ValueError, match="batch_size"):
        latency_batches(tok, texts, 16, batch_size=0)
    table = format_compression([CompressionRow("a", 4.0, 2.0, 20.0, 0.80), CompressionRow("b", 1.0, 1.0, 5.0, 0.79)])
    assert "4.00x" in table and "2.00x" in table and "-1.00" in table


def test_bench_compression_command_runs_in_the_ci_profile(tmp_path, monkeypatch, capsys):
    """The whole pipeline (students trained into a temporary cache) with a tiny stand-in teacher."""
    from bigmodel_course import finetuning
    from bigmodel_course.cli import main
    from bigmodel_course.data import review_splits

    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    splits = review_splits(seed=0)
    tok = CharTokenizer.train(splits.train_texts[:2000], min_freq=3)
    torch.manual_seed(0)
    teacher_model = GPTForSequenceClassification(GPTConfig(vocab_size=len(tok), max_len=32, d_model=32, n_heads=2,
                                                           n_layers=2)).eval()
    teacher = finetuning.SentimentClassifier(teacher_model, tok, {"test_accuracy": 0.5, "created": "v1"},
                                             tmp_path / "teacher")
    monkeypatch.setattr(finetuning, "load_sentiment_classifier", lambda *args, **kwargs: teacher)
    assert main(["bench", "compression", "--profile", "ci", "--rounds", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in ("teacher fp32", "magnitude pruned ", "FFN neurons pruned 50% (", "int8 Linear + embeddings",
                 "distilled student", "student w/o distillation"):
        assert name in out
    # both kinds of pruning remove the same share of the parameters
    import re
    shares = re.findall(r"magnitude pruned ([\d.]+)% params|FFN neurons pruned 50% \(([\d.]+)% params\)", out)
    assert len(shares) == 2 and abs(float(shares[0][0]) - float(shares[1][1])) < 0.5
    for kind in ("distilled", "control"):
        meta = (student_dir(kind, "ci") / "meta.json").read_text(encoding="utf-8")
        assert '"steps": 10' in meta
    assert load_student("control", teacher, "ci", train_if_missing=False).meta["steps"] == 10
    other = load_student("control", teacher, "ci", seed=1)  # another seed: its own folder, its own initialisation
    assert other.meta["seed"] == 1 and other.path == student_dir("control", "ci", seed=1)
    first = load_student("control", teacher, "ci", train_if_missing=False).model
    assert not torch.equal(other.model.score.weight, first.score.weight)
    teacher.meta["created"] = "another version"
    with pytest.raises(FileNotFoundError, match="no control student distilled from this teacher"):
        load_student("control", teacher, "ci", train_if_missing=False)
