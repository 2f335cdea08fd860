import math
import tempfile

import pytest
import torch
import torch.nn.functional as F

from bigmodel_course.alignment import (
    DPOModel,
    PreferencePair,
    dpo_loss,
    pair_batch,
    preference_loader,
    sequence_logprobs,
    sft_loader,
)
from bigmodel_course.chat import CHAT_TOKENS, hf_chat_tokenizer, render
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.training import Trainer, TrainConfig
from bigmodel_course.transformer import GPT, GPTConfig

PROMPT = ({"role": "user", "content": "天气"},)
PAIRS = [PreferencePair(PROMPT, "很好", "负面"),
         PreferencePair(({"role": "user", "content": "今天"},), "好", "天气很好")]


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.train(["你好世界，今天天气很好。正面负面"], min_freq=1).with_special_tokens(CHAT_TOKENS)


def tiny_gpt(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, max_len=32, d_model=16, n_heads=2, n_layers=1, dropout=0.0,
                         attn_dropout=0.0))


@pytest.mark.unit
def test_dpo_loss_by_hand():
    pc, pr, rc, rr = torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -2.0]), torch.tensor([-3.5, -1.0]), \
        torch.tensor([-3.0, -2.5])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = [0.5 * ((-3.0 + 3.5) - (-4.0 + 3.0)), 0.5 * ((-1.0 + 1.0) - (-2.0 + 2.5))]
    assert float(loss) == pytest.approx(sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2)
    torch.testing.assert_close(chosen - rejected, torch.tensor(margins))
    same = torch.tensor([-2.0])
    assert float(dpo_loss(same, same - 1, same, same - 1, beta=3.0)[0]) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


@pytest.mark.unit
def test_sequence_logprobs_sums_the_completion_tokens(tok):
    model = tiny_gpt(tok.vocab_size).eval()
    batch = pair_batch(PAIRS, tok, 32)
    got = sequence_logprobs(model, **batch)
    logits = model(batch["input_ids"], batch["attention_mask"]).logits
    for r in range(4):
        want = sum(F.log_softmax(logits[r, t - 1], -1)[batch["input_ids"][r, t]]
                   for t in range(1, batch["input_ids"].shape[1]) if batch["completion_mask"][r, t])
        assert float(got[r].detach()) == pytest.approx(float(want.detach()), abs=1e-5)
    with pytest.raises(ValueError, match="share a"):
        sequence_logprobs(model, batch["input_ids"], batch["attention_mask"][:, :-1], batch["completion_mask"])


@pytest.mark.unit
def test_pair_batch_puts_chosen_first_and_masks_only_the_reply(tok):
    batch = pair_batch(PAIRS, tok, 32)
    chosen = render([*PROMPT, {"role": "assistant", "content": "很好"}], tok)
    assert batch["input_ids"][0, :len(chosen.input_ids)].tolist() == chosen.input_ids
    assert batch["completion_mask"][0].tolist()[:len(chosen.input_ids)] == chosen.loss_mask  # one-turn prompt
    rejected_len = len(render([*PAIRS[1].prompt, {"role": "assistant", "content": "天气很好"}], tok).input_ids)
    assert int(batch["completion_mask"][3].sum()) == len("天气很好") + 1 and batch["attention_mask"][3].sum() == \
        rejected_len
    with pytest.raises(ValueError, match="must differ"):
        PreferencePair(PROMPT, "好", "好")
    with pytest.raises(ValueError, match="no preference pairs"):
        pair_batch([], tok, 32)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_on_the_same_model(tok, beta):
    """trl's DPOTrainer, given our chat template, builds the same batch and computes the same loss."""
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=0,
                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    policy, reference = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    rows = [{"prompt": list(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in PAIRS]
    args = DPOConfig(output_dir=tempfile.mkdtemp(), beta=beta, report_to=[], per_device_train_batch_size=2,
                     use_cpu=True, max_length=32, disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=hf_chat_tokenizer(tok))
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])  # dataset order
    ours = pair_batch(PAIRS, tok, 32)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        width = trl_batch[key].shape[1]
        assert torch.equal(trl_batch[key], ours[key][:, :width]), key
    trainer.model.eval()
    trl_loss = trainer._compute_loss(trainer.model, trl_batch, return_outputs=False)
    with torch.no_grad():
        logps = sequence_logprobs(policy.eval(), **ours)
        ref = sequence_logprobs(reference.eval(), **ours)
    loss, _, _ = dpo_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta)
    assert float(loss) == pytest.approx(float(trl_loss), abs=1e-5)
    assert float(loss) != pytest.approx(math.log(2), abs=1e-3)  # policy and reference really differ


@pytest.mark.unit
def test_dpo_training_moves_the_policy_and_never_the_reference(tok):
    policy = tiny_gpt(tok.vocab_size)
    model = DPOModel(policy, beta=0.5)
    before = {k: v.clone() for k, v in model.reference.state_dict().items()}
    batch = pair_batch(PAIRS, tok, 32)
    first = model(**batch)
    assert float(first.loss) == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as the reference
    trainer = Trainer(model, TrainConfig(lr=1e-2, max_steps=30, warmup_steps=0, seed=0), [batch])
    trainer.train()
    assert all(torch.equal(v, model.reference.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in model.reference.parameters()) and not model.reference.training
    after = model.eval()(**batch)
    assert float(after.loss) < 0.3 and bool((after.logits > 0).all())  # chosen now preferred in every pair
    with pytest.raises(ValueError, match="beta must be positive"):
        DPOModel(policy, beta=-1.0)


@pytest.mark.unit
def test_sft_loader_covers_every_conversation(tok):
    rendered = [render([*p.prompt, {"role": "assistant", "content": p.chosen}], tok) for p in PAIRS * 3]
    loader = sft_loader(rendered, tok.pad_id, batch_size=4, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and sum(b["input_ids"].shape[0] for b in batches) == 6
    assert [b["input_ids"].tolist() for b in batches] != [b["input_ids"].tolist() for b in loader]  # reshuffled
    with pytest.raises(ValueError, match="no conversations"):
        sft_loader([], tok.pad_id, 4)


@pytest.mark.unit
def test_preference_loader_batches_every_pair(tok):
    batches = list(preference_loader(PAIRS * 3, tok, 32, batch_size=4, shuffle=False))
    assert [b["input_ids"].shape[0] for b in batches] == [8, 4]  # chosen and rejected rows of 4 + 2 pairs
    torch.testing.assert_close(batches[0]["input_ids"], pair_batch(PAIRS * 2, tok, 32)["input_ids"])
    with pytest.raises(ValueError, match="no preference pairs"):
        preference_loader([], tok, 32, 4)
