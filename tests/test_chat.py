import pytest
import torch
import torch.nn.functional as F

from bigmodel_course.chat import (
    CHAT_CHARACTERS,
    CHAT_TOKENS,
    END,
    add_chat_tokens,
    hf_chat_tokenizer,
    render,
    reply,
    resize_token_embeddings,
    sft_batch,
    stream_reply,
)
from bigmodel_course.tokenization import CharTokenizer
from bigmodel_course.transformer import GPT, GPTConfig

pytestmark = pytest.mark.unit

CONVERSATION = [{"role": "system", "content": "你好"}, {"role": "user", "content": "天气"},
                {"role": "assistant", "content": "很好"}]


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.train(["你好世界，今天天气很好。正面负面 \n"], min_freq=1)


def tiny_gpt(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, max_len=32, d_model=16, n_heads=2, n_layers=1))


def test_added_special_tokens_keep_ids_round_trip_and_never_come_from_text(tok, tmp_path):
    chat = tok.with_special_tokens(CHAT_TOKENS)
    assert chat.vocab_size == tok.vocab_size + len(CHAT_TOKENS)
    assert all(chat.token_to_id(t) == tok.token_to_id(t) for t in tok.vocab)  # old ids unchanged
    assert chat.with_special_tokens(CHAT_TOKENS).vocab == chat.vocab  # adding twice changes nothing
    new_ids = [chat.token_to_id(t) for t in CHAT_TOKENS]
    assert set(new_ids) <= set(chat.special_ids)
    # a text spelling a role token stays characters: no prompt can inject a turn boundary
    assert not set(chat.encode("<|user|>", add_special=False)) & set(new_ids)
    assert chat.decode([chat.token_to_id("你"), new_ids[0], chat.token_to_id("好")]) == "你好"
    assert CharTokenizer.load(chat.save(tmp_path / "tok.json")).vocab == chat.vocab
    for bad in (["user"], ["<|User|>"], ["<|a b|>"]):
        with pytest.raises(ValueError, match="must look like <\\|name\\|>"):
            tok.with_special_tokens(bad)
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer([*tok.vocab, "ab"])
    assert tok.with_characters("好{").vocab_size == tok.vocab_size + 1  # only the missing character
    with pytest.raises(ValueError, match="characters must be a str"):
        tok.with_characters(["{"])


def test_add_chat_tokens_appends_mean_rows_and_keeps_the_old_model(tok):
    model = tiny_gpt(tok.vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grown, chat = add_chat_tokens(model, tok)
    added = len(CHAT_CHARACTERS) + len(CHAT_TOKENS)
    assert chat.vocab_size == tok.vocab_size + added and chat.encode("{}", add_special=False) == [tok.vocab_size,
                                                                                                 tok.vocab_size + 1]
    w_old, w_new = model.transformer.embeddings.word.weight, grown.transformer.embeddings.word.weight
    assert w_new.shape == (chat.vocab_size, 16)
    torch.testing.assert_close(w_new[: tok.vocab_size], w_old)
    torch.testing.assert_close(w_new[tok.vocab_size:], w_old.mean(0).expand(added, -1))
    assert grown.lm_head.weight is grown.transformer.embeddings.word.weight  # still tied
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched
    x = torch.tensor([tok.encode("今天天气很好")])
    model.eval(), grown.eval()
    with torch.no_grad():  # the same function on the old vocabulary
        torch.testing.assert_close(grown(x).logits[..., : tok.vocab_size], model(x).logits)
    with pytest.raises(ValueError, match="differ"):
        add_chat_tokens(tiny_gpt(tok.vocab_size + 1), tok)
    with pytest.raises(ValueError, match="vocab_size must be an int >="):
        resize_token_embeddings(model, tok.vocab_size - 1)


def test_render_a_hand_made_conversation(tok):
    chat = tok.with_special_tokens(CHAT_TOKENS)
    s, u, a, e = (chat.token_to_id(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", END))
    c = chat.token_to_id
    r = render(CONVERSATION, chat)
    assert r.input_ids == [chat.sep_id, s, c("你"), c("好"), e, u, c("天"), c("气"), e, a, c("很"), c("好"), e]
    assert r.loss_mask == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]  # only the reply and its end of turn
    assert r.labels == [-100] * 10 + [c("很"), c("好"), e]
    prompt = render(CONVERSATION[:2], chat, add_generation_prompt=True)
    assert prompt.input_ids == r.input_ids[:10] and prompt.loss_mask == [0] * 10
    two_turns = CONVERSATION + [{"role": "user", "content": "好"}, {"role": "assistant", "content": "面"}]
    assert sum(render(two_turns, chat).loss_mask) == 3 + 2  # every assistant turn is trained


@pytest.mark.parametrize("messages, error", [
    ([], "non-empty list"),
    ("你好", "non-empty list"),
    ([{"role": "robot", "content": "你好"}], "unknown role 'robot'"),
    ([{"role": "user", "content": ""}], "non-empty text content"),
    ([{"role": "user"}], "exactly 'role' and 'content'"),
    ([{"role": "user", "content": "你", "name": "x"}], "exactly 'role' and 'content'"),
    ([{"role": "user", "content": "你"}, {"role": "system", "content": "好"}], "system message may only come first"),
])
def test_render_rejects_bad_conversations(tok, messages, error):
    with pytest.raises(ValueError, match=error):
        render(messages, tok.with_special_tokens(CHAT_TOKENS))


def test_render_limits(tok):
    chat = tok.with_special_tokens(CHAT_TOKENS)
    with pytest.raises(ValueError, match="lacks the chat tokens"):
        render(CONVERSATION, tok)
    with pytest.raises(ValueError, match="takes 13 tokens, more than the context of 12"):
        render(CONVERSATION, chat, max_len=12)
    with pytest.raises(ValueError, match="nothing to reply to"):
        render(CONVERSATION, chat, add_generation_prompt=True)


def test_sft_loss_counts_only_assistant_tokens(tok):
    model, chat = add_chat_tokens(tiny_gpt(tok.vocab_size), tok)
    model.eval()  # no dropout: two forward passes agree
    short = render([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}], chat)
    batch = sft_batch([render(CONVERSATION, chat), short], chat.pad_id)
    assert batch["input_ids"].shape == (2, 13) and batch["attention_mask"][1].sum() == len(short.input_ids)
    assert (batch["labels"][1, len(short.input_ids):] == -100).all()
    logits = model(batch["input_ids"], batch["attention_mask"]).logits
    targets = [(b, t) for b in range(2) for t in range(1, 13) if batch["labels"][b, t] != -100]
    by_hand = torch.stack([F.cross_entropy(logits[b, t - 1], batch["labels"][b, t]) for b, t in targets]).mean()
    loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(loss, by_hand)
    assert len(targets) == 3 + 2
    with pytest.raises(ValueError, match="no examples"):
        sft_batch([], chat.pad_id)


@pytest.mark.parametrize("messages, generation_prompt", [
    (CONVERSATION, False),
    (CONVERSATION[:2], True),
    ([{"role": "user", "content": "今天 天气\n很好？"}], True),  # spaces, a newline, an unknown character
    ([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}, {"role": "tool", "content": "12"}],
     True),
])
def test_transformers_chat_template_gives_the_same_ids(tok, messages, generation_prompt):
    chat = tok.with_special_tokens(CHAT_TOKENS)
    hf = hf_chat_tokenizer(chat)
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)["input_ids"]
    assert ids == render(messages, chat, add_generation_prompt=generation_prompt).input_ids


def test_reply_stops_at_end_of_turn_after_learning_a_conversation(tok):
    model, chat = add_chat_tokens(tiny_gpt(tok.vocab_size), tok)
    batch = sft_batch([render(CONVERSATION, chat)], chat.pad_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    out = reply(model, chat, CONVERSATION[:2], max_new_tokens=8)
    assert (out.text, out.finished, out.n_tokens) == ("很好", True, 3)
    cut = reply(model, chat, CONVERSATION[:2], max_new_tokens=1)
    assert (cut.text, cut.finished) == ("很", False)
    long = [{"role": "user", "content": "天" * 30}]
    with pytest.raises(ValueError, match="no room left"):
        reply(model, chat, long)
    assert "".join(stream_reply(model, chat, CONVERSATION[:2], max_new_tokens=8)) == "很好"  # streamed, same text
    assert list(stream_reply(model, chat, CONVERSATION[:2], max_new_tokens=1)) == ["很"]
    sampled = dict(do_sample=True, temperature=1.5, seed=3)
    assert "".join(stream_reply(model, chat, CONVERSATION[:2], 8, **sampled)) == \
        reply(model, chat, CONVERSATION[:2], 8, **sampled).text
