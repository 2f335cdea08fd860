"""A chat template for the course's character GPT.

A conversation is rendered as

    [SEP] <|system|> … <|end|> <|user|> … <|end|> <|assistant|> … <|end|> …

[SEP] opens it (the text boundary the pre-trained GPT knows), each turn is a role token, the content's characters
and <|end|>. Training on conversations (supervised fine-tuning) predicts only the assistant's characters and their
<|end|> (the loss mask); generation appends <|assistant|> and stops at <|end|>. The same template is provided as a
`transformers` chat template (`hf_chat_tokenizer`), whose `apply_chat_template` yields the same ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .generation import generate, iter_tokens
from .tokenization import SPECIAL_TOKENS, CharTokenizer
from .transformer import GPT

ROLES = ("system", "user", "assistant", "tool")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
END = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END)
CHAT_CHARACTERS = "{}"  # JSON tool calls need braces, which the pre-training corpus has fewer than twice
IGNORE = -100  # label of positions the loss skips

# The same rendering in Jinja for `transformers` (messages carry role and content).
HF_CHAT_TEMPLATE = (
    "[SEP]{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def add_chat_tokens(model: GPT, tokenizer: CharTokenizer) -> tuple[GPT, CharTokenizer]:
    """The tokenizer with CHAT_CHARACTERS and the chat tokens appended and a copy of `model` with an embedding
    row for each.

    Each new row is the mean of the existing rows (Hewitt, 2021): with the tied LM head a new token then starts
    with an ordinary logit instead of an arbitrary one. Existing ids and weights are unchanged; the original
    model is left as it was.
    """
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"model vocabulary ({model.cfg.vocab_size}) and tokenizer ({tokenizer.vocab_size}) differ")
    chat_tok = tokenizer.with_characters(CHAT_CHARACTERS).with_special_tokens(CHAT_TOKENS)
    return resize_token_embeddings(model, chat_tok.vocab_size), chat_tok


def resize_token_embeddings(model: GPT, vocab_size: int) -> GPT:
    """A copy of `model` whose vocabulary grows to `vocab_size`; new embedding (and untied LM-head) rows are the
    mean of the existing ones."""
    old = model.cfg.vocab_size
    if not isinstance(vocab_size, int) or vocab_size < old:
        raise ValueError(f"vocab_size must be an int >= the current {old}, got {vocab_size!r}")
    grown = GPT(replace(model.cfg, vocab_size=vocab_size))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in ("transformer.embeddings.word.weight", "lm_head.weight"):
        w = state[key]
        state[key] = torch.cat([w, w.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)])
    grown.load_state_dict(state)
    return grown.train(model.training)


@dataclass(frozen=True)
class Rendered:
    """A conversation as token ids, with 1 in `loss_mask` where the token is a training target."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def labels(self) -> list[int]:
        """Targets for the causal-LM loss: the token where the mask is 1, else -100 (ignored)."""
        return [i if m else IGNORE for i, m in zip(self.input_ids, self.loss_mask)]


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """Validate a conversation: a non-empty list of {"role", "content"} dicts, roles from ROLES, non-empty text
    contents, a system message only first. Returns it as a list; raises ValueError naming the bad message."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("a conversation must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with exactly 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {m['role']!r}; expected one of {ROLES}")
        if not isinstance(m["content"], str) or not m["content"]:
            raise ValueError(f"message {i} ({m['role']}) must have non-empty text content")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
    return list(messages)


def render(messages: Sequence[dict], tokenizer: CharTokenizer, max_len: int | None = None,
           add_generation_prompt: bool = False) -> Rendered:
    """Token ids of a conversation and its loss mask (assistant contents and their <|end|>).

    With `add_generation_prompt` the ids end with <|assistant|>, ready for the model to reply; the last message
    must then not be the assistant's. A conversation longer than `max_len` tokens is an error, not truncated.
    """
    messages = check_messages(messages)
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the chat tokens {missing}; use add_chat_tokens first")
    end = tokenizer.token_to_id(END)
    ids, mask = [tokenizer.sep_id], [0]
    for m in messages:
        content = tokenizer.encode(m["content"], add_special=False)
        target = int(m["role"] == "assistant")
        ids += [tokenizer.token_to_id(ROLE_TOKENS[m["role"]]), *content, end]
        mask += [0] + [target] * (len(content) + 1)
    if add_generation_prompt:
        if messages[-1]["role"] == "assistant":
            raise ValueError("the last message is the assistant's; nothing to reply to")
        ids.append(tokenizer.token_to_id(ROLE_TOKENS["assistant"]))
        mask.append(0)
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"the conversation takes {len(ids)} tokens, more than the context of {max_len}")
    return Rendered(ids, mask)


def sft_batch(examples: Sequence[Rendered], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 outside the loss mask and on padding)."""
    if not examples:
        raise ValueError("no examples to batch")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        attention_mask[r, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass(frozen=True)
class Reply:
    """The assistant's reply text and whether it ended with <|end|> within the token budget."""

    text: str
    finished: bool
    n_tokens: int


def _reply_prompt(model: GPT, tokenizer: CharTokenizer, messages: Sequence[dict]) -> tuple[list[int], int]:
    """(ids ending with <|assistant|>, tokens of room left in the context)."""
    prompt = render(messages, tokenizer, add_generation_prompt=True)
    room = model.cfg.max_len - len(prompt.input_ids)
    if room < 1:
        raise ValueError(f"the conversation takes {len(prompt.input_ids)} tokens; no room left in the context of "
                         f"{model.cfg.max_len}")
    return prompt.input_ids, room


def reply(model: GPT, tokenizer: CharTokenizer, messages: Sequence[dict], max_new_tokens: int = 64,
          **sampling) -> Reply:
    """Generate the assistant's next turn (greedy unless `sampling` says otherwise), stopping at <|end|>."""
    ids, room = _reply_prompt(model, tokenizer, messages)
    end = tokenizer.token_to_id(END)
    out = generate(model, torch.tensor([ids]), max_new_tokens=min(max_new_tokens, room),
                   stop_ids=(end,), **sampling)[0, len(ids):].tolist()
    finished = end in out
    new = out[: out.index(end)] if finished else out
    return Reply(tokenizer.decode(new), finished, len(new) + int(finished))


def stream_reply(model: GPT, tokenizer: CharTokenizer, messages: Sequence[dict], max_new_tokens: int = 64,
                 **sampling) -> Iterator[str]:
    """The assistant's next turn as it is generated, one piece of text per token, ending before <|end|>; the
    same text `reply` returns for the same arguments."""
    ids, room = _reply_prompt(model, tokenizer, messages)
    end = tokenizer.token_to_id(END)
    for token in iter_tokens(model, torch.tensor([ids]), max_new_tokens=min(max_new_tokens, room), stop_ids=(end,),
                             **sampling):
        if token.item() == end:
            return
        yield tokenizer.decode([token.item()])


def hf_chat_tokenizer(tokenizer: CharTokenizer):
    """The character tokenizer as `transformers.PreTrainedTokenizerFast` with HF_CHAT_TEMPLATE: one token per
    character (unknown characters → [UNK]), the special tokens matched whole."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(WordLevel(tokenizer.vocab, unk_token=SPECIAL_TOKENS[1]))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    specials = [tokenizer.id_to_token(i) for i in tokenizer.special_ids]
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]",
                                   additional_special_tokens=[t for t in specials if t not in SPECIAL_TOKENS])
    fast.chat_template = HF_CHAT_TEMPLATE
    return fast
