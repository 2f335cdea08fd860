import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

from bigmodel_course.costs import (
    OPEN_WEIGHT_MODELS,
    REFERENCE_MODELS,
    ArchSpec,
    activation_bytes,
    flops_per_token,
    inference_weight_bytes,
    measured_flops,
    peak_training_memory,
    reference_model,
    saved_activation_bytes,
    training_state_bytes,
)
from bigmodel_course.transformer import (
    GPT,
    EncoderConfig,
    GPTConfig,
    TransformerEncoder,
    parameter_breakdown,
    set_gradient_checkpointing,
)
from bigmodel_course.utils import count_parameters


def hf_count(factory):
    with torch.device("meta"):  # no memory for the weights
        return sum(p.numel() for p in factory().parameters())


@pytest.mark.parametrize("name,factory", [
    ("GPT-2 124M", lambda: GPT2Model(GPT2Config())),
    ("BERT-base", lambda: BertModel(BertConfig())),
    ("LLaMA-7B", lambda: LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                                      num_hidden_layers=32, num_attention_heads=32))),
])
def test_reference_parameter_counts_match_transformers(name, factory):
    assert reference_model(name).parameters()["total"] == hf_count(factory)


def _open_weight(name):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = reference_model(name)
    kw = dict(vocab_size=spec.vocab_size, hidden_size=spec.d_model, intermediate_size=spec.d_ff,
              num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads,
              tie_word_embeddings=spec.tied_embeddings)
    return Qwen2ForCausalLM(Qwen2Config(**kw)) if name.startswith("Qwen") else LlamaForCausalLM(LlamaConfig(**kw))


@pytest.mark.parametrize("name", sorted(OPEN_WEIGHT_MODELS))
def test_open_weight_parameter_counts_match_transformers(name):
    assert reference_model(name).parameters()["total"] == hf_count(lambda: _open_weight(name))


def test_kv_cache_bytes_follow_the_key_value_heads():
    llama3 = reference_model("Llama-3-8B")
    assert llama3.kv_cache_bytes(1, "bf16") == 2 * 32 * 8 * 128 * 2  # 128 KiB per token
    mha = ArchSpec("MHA twin", 128256, 8192, 4096, 32, 32, 14336)
    assert mha.kv_cache_bytes(1000) == 4 * llama3.kv_cache_bytes(1000)  # 32 query heads share 8 K/V heads
    with pytest.raises(ValueError, match="tokens"):
        llama3.kv_cache_bytes(0)
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        ArchSpec("bad", 10, 8, 32, 1, 4, 64, n_kv_heads=3)
    from bigmodel_course.generation import kv_cache_bytes

    assert kv_cache_bytes(2, 3, 5, 32, 4, n_heads=4, n_kv_heads=1) * 4 == kv_cache_bytes(2, 3, 5, 32, 4)
    with pytest.raises(ValueError, match="n_kv_heads=3 needs n_heads"):
        kv_cache_bytes(2, 3, 5, 32, n_heads=4, n_kv_heads=3)


def test_kv_cache_formula_matches_a_real_cache():
    from bigmodel_course.generation import cache_nbytes
    from bigmodel_course.transformer import LlamaConfig as OurLlama

    cfg = OurLlama(vocab_size=50, max_len=32, d_model=32, n_heads=4, n_kv_heads=2, n_layers=3)
    model = GPT(cfg).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 7)), kv_cache=cache)
    assert cache_nbytes(cache) == ArchSpec.from_config(cfg).kv_cache_bytes(2 * 7, "fp32")


def test_gpt3_has_175_billion_parameters():
    assert reference_model("GPT-3 175B").parameters()["total"] == pytest.approx(175e9, rel=0.005)
    assert set(REFERENCE_MODELS) == {"GPT-2 124M", "BERT-base", "LLaMA-7B", "GPT-3 175B"}
    with pytest.raises(ValueError, match="unknown model"):
        reference_model("GPT-5")


def tiny_cfg(**kw):
    base = dict(vocab_size=97, max_len=32, d_model=32, n_heads=4, n_layers=2, dropout=0.0, attn_dropout=0.0)
    return GPTConfig(**{**base, **kw})


def test_spec_of_our_models_counts_their_parameters():
    cfg = tiny_cfg()
    spec = ArchSpec.from_config(cfg)
    assert spec.parameters()["total"] == count_parameters(GPT(cfg)) == parameter_breakdown(cfg)["total"]
    enc = EncoderConfig(vocab_size=97, max_len=32, d_model=32, n_heads=4, n_layers=2)
    assert ArchSpec.from_config(enc, pooler=True).parameters()["total"] == count_parameters(TransformerEncoder(enc))


def batch(cfg, b=3, t=32):
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("training", [True, False])
def test_flops_formula_equals_torch_flop_counter(training):
    cfg = tiny_cfg(fused_attention=False)  # the formula path: Q·Kᵀ and attention·V are counted as matmuls
    model = GPT(cfg)
    measured = measured_flops(model, batch(cfg), training=training)
    assert measured == flops_per_token(ArchSpec.from_config(cfg), 32, training=training) * 3 * 32
    assert all(p.grad is None for p in model.parameters())


def test_flops_rule_of_thumb_for_gpt3():
    spec = reference_model("GPT-3 175B")
    n = spec.parameters()["total"]
    assert flops_per_token(spec, 1, training=True) == pytest.approx(6 * n, rel=0.01)  # short context: 6N
    # the context term, by hand from GPT-3's 96 layers of width 12288: 4·L·h per extra token of context
    extra = flops_per_token(spec, 2048, training=False) - flops_per_token(spec, 1, training=False)
    assert extra == 4 * 96 * 12288 * 2047


def test_memory_formulas():
    assert training_state_bytes(10) == {"weights": 40, "gradients": 40, "optimizer": 80, "total": 160}
    assert training_state_bytes(10, "bf16")["total"] == 160
    assert inference_weight_bytes(10, "int8") == 10 and inference_weight_bytes(10, "fp16") == 20
    spec = reference_model("GPT-2 124M")
    s, b, h, a, L = 1024, 1, 768, 12, 12
    assert activation_bytes(spec, b, s) == L * s * b * h * (34 + 5 * a * s // h)
    assert activation_bytes(spec, b, s, fused_attention=True) == L * 34 * s * b * h
    # the attention matrices grow with s², the rest with s
    assert activation_bytes(spec, 1, 2048) > 2 * activation_bytes(spec, 1, 1024)
    assert activation_bytes(spec, 1, 2048, True) == 2 * activation_bytes(spec, 1, 1024, True)


@pytest.mark.parametrize("call", [
    lambda: training_state_bytes(10, "fp8"), lambda: training_state_bytes(0),
    lambda: inference_weight_bytes(10, "int4"), lambda: activation_bytes(reference_model("BERT-base"), 0, 10),
    lambda: flops_per_token(reference_model("BERT-base"), 0),
    lambda: ArchSpec("x", 10, 10, 30, 1, 4, 10),
])
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


class LinearRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x, labels=None):
        return type("Out", (), {"loss": self.fc(x).relu().sum()})()


def test_saved_activation_bytes_is_exact_on_a_known_graph():
    # Linear saves its input (5×4 floats) for the weight gradient, ReLU its output (5×8); sum saves nothing
    assert saved_activation_bytes(LinearRelu(), {"x": torch.randn(5, 4)}) == (5 * 4 + 5 * 8) * 4


def test_checkpointing_lowers_saved_and_peak_activation_memory():
    cfg = tiny_cfg(n_layers=3)
    model = GPT(cfg)
    b = batch(cfg, b=4)
    opt = torch.optim.AdamW(model.parameters())
    before_saved = saved_activation_bytes(model, b)
    peak_training_memory(model, b, opt)
    before = peak_training_memory(model, b, opt)  # second step: Adam's moments exist
    n_bytes = 4 * count_parameters(model)
    assert before["parameters"] == n_bytes
    assert 2 * n_bytes <= before["optimizer"] <= 2 * n_bytes + 4 * len(list(model.parameters()))
    set_gradient_checkpointing(model)
    after_saved = saved_activation_bytes(model, b)
    after = peak_training_memory(model, b, opt)
    assert after_saved < before_saved / 2
    assert after["activations"] < before["activations"]
    assert after["total"] < before["total"]
