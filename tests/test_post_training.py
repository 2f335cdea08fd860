import pytest
import torch

import bigmodel_course.post_training as post
from bigmodel_course.cli import main
from bigmodel_course.chat import render
from bigmodel_course.data.instructions import Example, tool_call
from bigmodel_course.post_training import (
    RIGHT,
    assistant_dir,
    load_assistant,
    preference_pairs,
    ADAPTER_DIR,
    chat_model,
    dpo_tune,
    load_pairs,
    preference_accuracy,
    sampled_kl,
    train_dpo,
    train_lora,
    train_sft,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache with the ci pre-trained GPT and both ci assistant stages trained into it."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGMODEL_CACHE", str(root))
        train_sft("ci", progress=False)
        train_lora("ci", progress=False)
        train_dpo("ci", progress=False)
        yield root


@pytest.fixture
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(cache))
    return cache


def test_stages_publish_and_load_in_transformers_with_the_chat_template(in_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = load_assistant("sft", "ci", train_if_missing=False)
    dpo = load_assistant("dpo", "ci", train_if_missing=False)
    assert sft.path == assistant_dir("sft", "ci") and sft.meta["stage"] == "sft" and dpo.meta["n_pairs"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(sft.model.state_dict().values(), dpo.model.state_dict().values()))
    messages = [{"role": "user", "content": "这家店怎么样？"}]
    ids = render(messages, sft.tokenizer, add_generation_prompt=True).input_ids
    hf_tok = AutoTokenizer.from_pretrained(sft.path / "hf")
    assert list(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)) == ids
    hf = AutoModelForCausalLM.from_pretrained(sft.path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits, sft.model(torch.tensor([ids])).logits,
                                   atol=1e-4, rtol=1e-4)


def test_a_stage_of_another_recipe_is_trained_again_and_a_missing_one_is_reported(in_cache, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="bigmodel-course sft --profile ci"):
        load_assistant("sft", "ci", root=tmp_path, train_if_missing=False)
    with pytest.raises(ValueError, match="unknown assistant stage"):
        assistant_dir("rlhf", "ci")
    trained = []
    monkeypatch.setitem(post.SFT_SPECS, "ci", post.SFTSpec(60, 3, 16, 1e-3, 1))
    monkeypatch.setattr(post, "train_sft", lambda profile, root, progress: trained.append(profile) or
                        post.assistant_dir("sft", profile, root))
    load_assistant("sft", "ci")  # the recorded recipe differs from the spec now: trained again (stubbed here)
    assert trained == ["ci"]


QUESTION = Example("sentiment", ({"role": "user", "content": "好不好"}, {"role": "assistant", "content": "正面"}),
                   "正面", "src")
TOOL_Q = Example("arith", ({"role": "user", "content": "计算 100+200"},
                           {"role": "assistant", "content": tool_call("100+200")},
                           {"role": "tool", "content": "300"}, {"role": "assistant", "content": "300"}), "300", "k")


def test_preference_pairs_choose_the_best_judged_sample(monkeypatch):
    samples = {"好不好": [("负面", True), ("正面", True), ("正", False)],
               "计算 100+200": [("300", True), ("300", True)],  # never calls the tool: all judged alike
               "300": [("3000", True), ("300", True)]}  # the answer after the tool's result
    monkeypatch.setattr(post, "sample_replies", lambda m, t, prompt, n, temp, seed: samples[prompt[-1]["content"]])
    pairs = preference_pairs(None, None, [QUESTION, TOOL_Q], n_samples=3, temperature=1.0)
    # right > wrong > cut off; no pair for the call; the answer step of TOOL_Q prefers the tool's result
    assert [(p.chosen, p.rejected) for p in pairs] == [("正面", "正"), ("300", "3000")]
    assert pairs[0].prompt == QUESTION.prompt and pairs[1].prompt == TOOL_Q.messages[:-1]
    both = preference_pairs(None, None, [QUESTION, TOOL_Q], 3, 1.0, reference_when_none_right=True)
    assert [(p.chosen, p.rejected) for p in both] == [("正面", "正"), (tool_call("100+200"), "300"),
                                                      ("300", "3000")]
    assert RIGHT == 2.0


def test_the_lora_stage_keeps_its_adapter_which_gives_the_merged_logits(in_cache):
    from peft import PeftModel

    from bigmodel_course.interop import gpt_to_hf

    lora = load_assistant("lora", "ci", train_if_missing=False)
    assert 0 < lora.meta["trainable_parameters"] / lora.meta["total_parameters"] < 0.25
    base, tok = chat_model("ci", progress=False, dropout=0.0)
    assert lora.meta["trainable_tokens"] == list(range(tok.vocab_size - len(lora.meta["trainable_tokens"]),
                                                         tok.vocab_size))
    adapted = PeftModel.from_pretrained(gpt_to_hf(base.eval()), lora.path / ADAPTER_DIR).eval()
    ids = torch.tensor([render([{"role": "user", "content": "你好"}], tok, add_generation_prompt=True).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, lora.model(ids).logits, atol=1e-4, rtol=1e-4)
        assert (lora.model(ids).logits - base(ids).logits).abs().max() > 1e-3  # training changed the model


def test_the_command_line_reports_a_cached_stage_and_chats(in_cache, capsys, monkeypatch):
    assert main(["sft", "--profile", "ci"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert main(["chat", "--profile", "ci", "--max-tokens", "0"]) == 2
    said = iter(["这家店怎么样？", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(said))
    assert main(["chat", "--profile", "ci", "--stage", "sft", "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "assistant (sft, ci)" in out and out.count("助手：") == 1  # one streamed reply, then the empty line ends


def test_dpo_pairs_are_kept_and_training_on_them_wins_them_while_the_reference_ties(in_cache):
    import copy

    sft = load_assistant("sft", "ci", train_if_missing=False)
    dpo = load_assistant("dpo", "ci", train_if_missing=False)
    pairs = load_pairs(dpo.path)
    assert len(pairs) == dpo.meta["n_pairs"] and all(p.chosen != p.rejected for p in pairs)
    assert preference_accuracy(sft.model, sft.model, sft.tokenizer, pairs) == 0.0  # every margin is exactly 0
    policy = copy.deepcopy(sft.model)
    dpo_tune(policy, sft.tokenizer, pairs, post.DPOSpec(6, 4, 1.0, 0.1, 30, 8, 1e-3), progress=False)
    assert preference_accuracy(policy, sft.model, sft.tokenizer, pairs) >= 0.9
    prompts = [QUESTION, TOOL_Q]
    assert sampled_kl(sft.model, sft.model, sft.tokenizer, prompts) == pytest.approx(0.0, abs=1e-5)
    assert sampled_kl(policy, sft.model, sft.tokenizer, prompts) != pytest.approx(0.0, abs=1e-3)
