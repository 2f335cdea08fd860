from unittest.mock import patch

import pytest
import torch

from bigmodel_course.transformer import (
    GPT,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    GPTConfig,
    GPTForSequenceClassification,
    TransformerBlock,
    TransformerConfig,
    TransformerEncoder,
    parameter_breakdown,
)
from bigmodel_course.utils import count_parameters


def small(cls=GPTConfig, **kw):
    base = dict(vocab_size=50, max_len=16, d_model=32, n_heads=4, n_layers=2, dropout=0.0, attn_dropout=0.0)
    return cls(**{**base, **kw})


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_gpt_kv_cached_decoding_equals_full_forward(position):
    model = GPT(small(position=position)).eval()
    ids = torch.randint(0, 50, (2, 9))
    full = model(ids).logits
    cache = model.new_cache()
    steps = [model(ids[:, :4], kv_cache=cache).logits]  # a prompt, then one token at a time
    steps += [model(ids[:, t : t + 1], kv_cache=cache).logits for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_gpt_is_causal_future_tokens_do_not_change_the_past():
    model = GPT(small()).eval()
    ids = torch.randint(0, 50, (1, 8))
    changed = ids.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 50
    torch.testing.assert_close(model(ids).logits[:, :5], model(changed).logits[:, :5])


def test_encoder_padding_does_not_change_real_tokens():
    model = TransformerEncoder(small(EncoderConfig)).eval()
    ids = torch.randint(1, 50, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    torch.testing.assert_close(model(padded, mask).last_hidden_state[:, :5], model(ids).last_hidden_state,
                               atol=1e-5, rtol=0)


def test_gpt_weight_tying_and_parameter_breakdown():
    cfg = small()
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.embeddings.word.weight
    assert parameter_breakdown(cfg)["total"] == count_parameters(model)
    untied = small(tie_word_embeddings=False)
    assert parameter_breakdown(untied)["total"] == count_parameters(GPT(untied))


def test_encoder_parameter_breakdown_with_pooler():
    cfg = small(EncoderConfig)
    assert parameter_breakdown(cfg, pooler=True)["total"] == count_parameters(TransformerEncoder(cfg))
    assert parameter_breakdown(cfg)["total"] == count_parameters(TransformerEncoder(cfg, add_pooler=False))


def test_block_pre_and_post_layer_norm_differ_and_keep_shape():
    x = torch.randn(2, 5, 32)
    pre = TransformerBlock(small(norm_first=True)).eval()
    post = TransformerBlock(small(norm_first=False)).eval()
    post.load_state_dict(pre.state_dict())
    (a, _), (b, _) = pre(x), post(x)
    assert a.shape == b.shape == x.shape
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)  # post-LN output is normalised


def test_heads_return_logits_and_losses():
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[2, 4:] = 0
    labels = torch.tensor([0, 1, 1])
    out = EncoderForSequenceClassification(small(EncoderConfig))(ids, mask, labels=labels)
    assert out.logits.shape == (3, 2) and out.loss.ndim == 0
    out = GPTForSequenceClassification(small())(ids, mask, labels=labels)
    assert out.logits.shape == (3, 2) and out.loss.ndim == 0
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[:, 2] = ids[:, 2]
    out = EncoderForMaskedLM(small(EncoderConfig))(ids, mask, labels=mlm_labels)
    assert out.logits.shape == (3, 7, 50)
    assert out.loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)
    out = GPT(small())(ids, labels=ids)  # next-token loss: logits at t predict the id at t + 1
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_gpt_classifier_reads_the_last_real_token():
    model = GPTForSequenceClassification(small()).eval()
    ids = torch.randint(1, 50, (1, 4))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(model(padded, mask).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_return_attention_gives_one_map_per_layer():
    out = TransformerEncoder(small(EncoderConfig)).eval()(torch.randint(0, 50, (2, 6)), return_attention=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 6, 6)


def test_bad_inputs_give_clear_errors():
    model = GPT(small())
    with pytest.raises(ValueError, match="must be an integer tensor.*torch.float32"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="sequence of 17 tokens is longer than max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\); expected \(batch=1, length=4\)"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"values must lie in \[0, 50\), got min=0, max=50"):
        model(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_heads=5 does not divide d_model=32"):
        small(n_heads=5)
    with pytest.raises(ValueError, match="unknown position encoding 'alibi'"):
        small(position="alibi")
    with pytest.raises(ValueError, match="KV cache only makes sense"):
        TransformerEncoder(small(EncoderConfig)).stack(torch.zeros(1, 2, dtype=torch.long), kv_cache=[])


def test_bad_token_ids_raise_a_clear_error():
    gpt, encoder = GPT(small()), TransformerEncoder(small(EncoderConfig))
    with pytest.raises(ValueError, match=r"input_ids values must lie in \[0, 50\), got min=-1, max=3"):
        gpt(torch.tensor([[3, -1]]))
    with pytest.raises(ValueError, match=r"input_ids values must lie in \[0, 50\), got min=0, max=99"):
        encoder(torch.tensor([[0, 99]]))
    with pytest.raises(ValueError, match=r"token_type_ids values must lie in \[0, 2\), got min=0, max=2"):
        encoder(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(1, 1\), input_ids \(1, 2\)"):
        encoder(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0]]))


def test_token_ids_are_checked_once_per_forward():
    import bigmodel_course.transformer as T

    gpt, encoder = GPT(small()).eval(), T.EncoderForSequenceClassification(small(EncoderConfig)).eval()
    ids = torch.randint(0, 50, (2, 6))
    with patch.object(T, "_check_id_tensors", wraps=T._check_id_tensors) as check, \
            patch("torch.aminmax", wraps=torch.aminmax) as aminmax:
        gpt(ids)
        assert (check.call_count, aminmax.call_count) == (1, 1)
        cache = gpt.new_cache()
        gpt(ids[:, :4], kv_cache=cache)
        gpt(ids[:, 4:5], kv_cache=cache)
        assert (check.call_count, aminmax.call_count) == (3, 3)
        check.reset_mock(), aminmax.reset_mock()
        encoder(ids, torch.ones_like(ids))
        assert (check.call_count, aminmax.call_count) == (1, 1)
        encoder(ids, token_type_ids=torch.zeros_like(ids))  # ids and segments: one check, one device sync
        assert (check.call_count, aminmax.call_count) == (2, 3)
        assert [name for _, _, name in check.call_args.args[0]] == ["input_ids", "token_type_ids"]


def test_block_takes_the_padding_mask_by_keyword():
    block = TransformerBlock(small()).eval()
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(block(x, padding_mask=torch.ones(2, 5))[0], block(x)[0])
    with pytest.raises(TypeError):
        block(x, torch.ones(2, 5))


def test_kv_cache_longer_than_the_position_table_is_rejected():
    model = GPT(small(max_len=4)).eval()
    cache = model.new_cache()
    model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="sequence of 5 tokens is longer than max_len=4"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_config_round_trip_and_unknown_keys():
    cfg = small()
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown GPTConfig keys: \['colour'\]"):
        GPTConfig.from_dict({**cfg.to_dict(), "colour": 1})
    assert TransformerConfig(vocab_size=10, d_model=8, n_heads=2).d_ff == 32


def test_mean_pool_averages_real_tokens_only():
    from bigmodel_course.transformer import mean_pool

    h = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(mean_pool(h, torch.tensor([[1, 1, 0, 0]])), h[:, :2].mean(1))
    torch.testing.assert_close(mean_pool(h), h.mean(1))
    with pytest.raises(ValueError, match="hidden states must be"):
        mean_pool(h[0])


# ------------------------------------------------------------------ activation checkpointing

def test_gradient_checkpointing_gives_identical_gradients_with_dropout():
    from bigmodel_course.transformer import set_gradient_checkpointing

    torch.manual_seed(0)
    plain = GPT(small(dropout=0.2, attn_dropout=0.2, n_layers=3))
    ckpt = GPT(small(dropout=0.2, attn_dropout=0.2, n_layers=3))
    ckpt.load_state_dict(plain.state_dict())
    assert set_gradient_checkpointing(ckpt) == 1
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # the padding mask reaches the checkpointed blocks too
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them in the recomputation
        model(ids, mask, labels=ids).loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, atol=0, rtol=0)


def test_gradient_checkpointing_only_in_training():
    from bigmodel_course.transformer import set_gradient_checkpointing

    model = GPT(small())
    set_gradient_checkpointing(model)
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():  # inference, and the KV-cached decoding path, are unchanged
        full = model.eval()(ids).logits
        cache = model.new_cache()
        steps = torch.cat([model(ids[:, :4], kv_cache=cache).logits, model(ids[:, 4:], kv_cache=cache).logits], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    assert set_gradient_checkpointing(model, False) == 1
    assert not model.transformer.gradient_checkpointing
    with pytest.raises(ValueError, match="no TransformerStack"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2))
