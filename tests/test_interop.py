"""Our models against Hugging Face `transformers` implementations holding the same weights."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel

from bigmodel_course.interop import (
    encoder_from_hf,
    encoder_to_hf,
    gpt_classifier_from_hf,
    gpt_classifier_to_hf,
    gpt_config_from_hf,
    gpt_from_hf,
    gpt_to_hf,
)
from bigmodel_course.transformer import GPTConfig, GPTForSequenceClassification


@pytest.fixture
def hf_gpt2():
    cfg = GPT2Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def bert_config():
    return BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=24)


def batch():
    ids = torch.randint(0, 97, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    return ids, mask


def test_gpt_from_hf_gives_the_same_logits(hf_gpt2):
    ids, mask = batch()
    ours = gpt_from_hf(hf_gpt2).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf_gpt2(ids).logits, atol=1e-5, rtol=0)
        real = mask.bool()  # with right padding, real tokens must agree exactly
        torch.testing.assert_close(ours(ids, mask).logits[real], hf_gpt2(ids, attention_mask=mask).logits[real],
                                   atol=1e-5, rtol=0)


def test_gpt_round_trip_back_to_hf(hf_gpt2):
    ids, _ = batch()
    back = gpt_to_hf(gpt_from_hf(hf_gpt2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf_gpt2(ids).logits, atol=1e-5, rtol=0)
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()


def test_gpt_classifier_matches_hf_gpt2_for_sequence_classification():
    torch.manual_seed(0)
    ours = GPTForSequenceClassification(GPTConfig(vocab_size=97, max_len=24, d_model=32, n_heads=4, n_layers=2,
                                                  num_labels=3, pad_token_id=0)).eval()
    ids = torch.randint(1, 97, (3, 11))  # no pad id inside the texts
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:], mask[2, 4:] = 0, 0
    ids = ids.masked_fill(mask == 0, 0)  # right padding with the pad id
    hf = gpt_classifier_to_hf(ours)
    with torch.no_grad():
        expected = ours(ids, mask).logits
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=0)
        back = gpt_classifier_from_hf(hf).eval()
        torch.testing.assert_close(back(ids, mask).logits, expected, atol=1e-5, rtol=0)
    hf.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_token_id"):
        gpt_classifier_from_hf(hf)


def test_kv_cache_matches_hf_incremental_decoding(hf_gpt2):
    ids, _ = batch()
    ours = gpt_from_hf(hf_gpt2).eval()
    cache = ours.new_cache()
    with torch.no_grad():
        step = torch.cat([ours(ids[:, t : t + 1], kv_cache=cache).logits for t in range(ids.shape[1])], dim=1)
        torch.testing.assert_close(step, hf_gpt2(ids).logits, atol=1e-5, rtol=0)


def test_encoder_from_bert_model_gives_the_same_hidden_states(bert_config):
    hf = BertModel(bert_config).eval()
    ids, mask = batch()
    ours = encoder_from_hf(hf)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask)
        out = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooled, ref.pooler_output, atol=1e-5, rtol=0)


def test_encoder_round_trip_back_to_bert_model(bert_config):
    hf = BertModel(bert_config).eval()
    ids, mask = batch()
    back = encoder_to_hf(encoder_from_hf(hf))
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask).last_hidden_state,
                                   hf(ids, attention_mask=mask).last_hidden_state, atol=1e-5, rtol=0)


def test_masked_lm_both_ways(bert_config):
    hf = BertForMaskedLM(bert_config).eval()
    ids, mask = batch()
    ours = encoder_from_hf(hf)
    back = encoder_to_hf(ours)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, mask).logits, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(back(ids, attention_mask=mask).logits, ref, atol=1e-5, rtol=0)


def test_unsupported_models_and_configs_are_rejected(hf_gpt2, bert_config):
    with pytest.raises(ValueError,
                       match="expected one of BertModel, BertForMaskedLM, BertForPreTraining, got GPT2LMHeadModel"):
        encoder_from_hf(hf_gpt2)
    hf_gpt2.config.activation_function = "swish"
    with pytest.raises(ValueError, match="unsupported Hugging Face activation 'swish'"):
        gpt_config_from_hf(hf_gpt2.config)
    bert_config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="absolute position embeddings"):
        encoder_from_hf(BertModel(bert_config))


def test_causal_lm_loss_equals_transformers(hf_gpt2):
    ids, _ = batch()
    labels = ids.clone()
    labels[0, 5:] = -100
    ours = gpt_from_hf(hf_gpt2).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, labels=labels).loss, hf_gpt2(ids, labels=labels).loss,
                                   atol=1e-6, rtol=1e-6)


def test_pretraining_model_matches_bert_for_pretraining_both_ways(bert_config):
    from transformers import BertForPreTraining

    hf = BertForPreTraining(bert_config).eval()
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    nsp = torch.tensor([0, 1, 0])
    ours = encoder_from_hf(hf)
    back = encoder_to_hf(ours)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, labels=labels, next_sentence_label=nsp)
        out = ours(ids, mask, labels=labels, next_sentence_label=nsp)
        again = back(ids, attention_mask=mask, labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(out.logits, ref.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.loss, ref.loss, atol=1e-6, rtol=1e-6)


def test_a_pretraining_checkpoint_loads_as_bert_for_masked_lm(bert_config, tmp_path):
    from transformers import BertForMaskedLM

    from bigmodel_course.transformer import EncoderForPreTraining

    ours = EncoderForPreTraining(encoder_from_hf(BertModel(bert_config)).cfg).eval()
    encoder_to_hf(ours).save_pretrained(tmp_path)
    mlm = BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(mlm(ids, attention_mask=mask).logits, ours(ids, mask).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad", [0, 3])
def test_pre_ln_encoder_exports_to_roberta_prelayernorm_with_equal_logits(pad, tmp_path):
    """BERT is post-LN; a pre-LN encoder goes to transformers' RobertaPreLayerNormForMaskedLM, whose real tokens
    are numbered from pad + 1: logits agree at every real token of a right-padded, two-segment batch, also after
    save_pretrained / AutoModelForMaskedLM.from_pretrained."""
    from transformers import AutoModelForMaskedLM

    from bigmodel_course.interop import encoder_to_hf
    from bigmodel_course.transformer import EncoderConfig, EncoderForPreTraining

    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=40, max_len=16, d_model=16, n_heads=2, n_layers=2, norm_first=True,
                        pad_token_id=pad, dropout=0.0, attn_dropout=0.0)
    model = EncoderForPreTraining(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # LayerNorm weights and biases away from 1 and 0
    encoder_to_hf(model).save_pretrained(tmp_path)
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "RobertaPreLayerNormForMaskedLM"
    ids = torch.randint(5, 40, (3, 16))
    mask = torch.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = pad, 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    types[1, 9:] = 0
    with torch.no_grad():
        ours = model(ids, mask, types).logits
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="only pre-LN encoders"):
        from bigmodel_course.interop import prelayernorm_encoder_to_hf
        prelayernorm_encoder_to_hf(EncoderForPreTraining(EncoderConfig(vocab_size=40, max_len=16, d_model=16,
                                                                       n_heads=2, n_layers=1)))
