"""From the pre-trained GPT to an assistant: the supervised fine-tuning (SFT) and DPO recipes of each run profile,
on-policy preference pairs, and the assistant models published in the cache.

`train_sft` adds the chat tokens to the Chapter 2 GPT and fine-tunes every weight on the instruction
conversations (`data.instructions`); `train_dpo` samples the SFT model's own replies to training prompts, judges
them (`assistant.judge_reply`), and tunes a copy towards the judged-better replies with DPO, the SFT model as the
reference. Each stage is published atomically in `<cache>/assistant/<stage>-<profile>` with `hf/` (the weights as
GPT2LMHeadModel and the tokenizer with its chat template, for `transformers`' `apply_chat_template`).
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .alignment import DPOModel, PreferencePair, preference_loader, sequence_logprobs, sft_loader
from .assistant import decision_points
from .chat import END, add_chat_tokens, render, reply
from .data.instructions import Example, build_instructions
from .generation import generate
from .model_cache import (
    HISTORY_FILE,
    is_cached,
    load_or_train,
    publish,
    published,
    read_json,
    read_meta,
    write_model_files,
)
from .lora import ALL_LINEAR_MODULES, lora_model, merge_lora, trainable_share
from .pretrained import load_pretrained, read_model_folder
from .tokenization import CharTokenizer
from .training import Trainer, TrainConfig
from .transformer import GPT, GPTConfig
from .utils import cache_dir, get_profile, seed_everything

STAGES = ("sft", "lora", "dpo")
ADAPTER_DIR = "adapter"  # the LoRA stage's adapter, in peft's format
PAIRS_FILE = "pairs.json"  # the DPO stage's training pairs
RIGHT = 2.0  # `judge_reply` of a well-formed, fully right reply


@dataclass(frozen=True)
class SFTSpec:
    """Supervised fine-tuning of one profile: conversations per task, optimizer steps, batch and learning rate."""

    n_per_task: int
    max_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    dropout: float = 0.0  # the pre-trained GPT's 0.1 slows fine-tuning to copy text (measured in the spike runs)


@dataclass(frozen=True)
class LoRASpec:
    """SFT through LoRA adapters (the profile's SFTSpec otherwise): rank, α, the GPT-2 modules adapted, the rate."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    lr: float


@dataclass(frozen=True)
class DPOSpec:
    """DPO of one profile: training prompts per task, samples drawn per prompt (temperature), β and the optimizer."""

    n_prompts_per_task: int
    n_samples: int
    temperature: float
    beta: float
    max_steps: int
    batch_size: int
    lr: float
    # a prompt none of whose samples is judged right gets the reference reply as its chosen one (off-policy);
    # used where the model is too weak to sample any right reply (the ci profile)
    reference_when_none_right: bool = False


SFT_SPECS = {
    "ci": SFTSpec(n_per_task=60, max_steps=20, batch_size=16, lr=1e-3, warmup_steps=2),
    "full": SFTSpec(n_per_task=6000, max_steps=2400, batch_size=32, lr=1e-3, warmup_steps=30),
}
LORA_SPECS = {
    "ci": LoRASpec(rank=4, alpha=8.0, target_modules=ALL_LINEAR_MODULES, lr=2e-3),
    "full": LoRASpec(rank=8, alpha=16.0, target_modules=ALL_LINEAR_MODULES, lr=2e-3),
}
DPO_SPECS = {
    "ci": DPOSpec(n_prompts_per_task=6, n_samples=4, temperature=1.0, beta=0.1, max_steps=4, batch_size=4, lr=1e-5,
                  reference_when_none_right=True),
    "full": DPOSpec(n_prompts_per_task=300, n_samples=6, temperature=1.0, beta=0.1, max_steps=200, batch_size=16,
                    lr=2e-5),
}


def chat_model(profile: str | None = None, progress: bool = True,
               dropout: float | None = None) -> tuple[GPT, CharTokenizer]:
    """The profile's pre-trained GPT with the chat tokens added (`chat.add_chat_tokens`), its dropout set to
    `dropout` when given: the starting point of SFT."""
    pre = load_pretrained("gpt", get_profile(profile).name, progress=progress)
    model, tokenizer = add_chat_tokens(pre.model, pre.tokenizer)
    if dropout is not None:
        rebuilt = GPT(replace(model.cfg, dropout=dropout, attn_dropout=dropout))
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt.train(model.training)
    return model, tokenizer


def fitting(examples: Sequence[Example], tokenizer: CharTokenizer, max_len: int) -> list[Example]:
    """The examples whose whole conversation fits `max_len` tokens (all of them at the full profile's 128)."""
    return [e for e in examples if len(render(e.messages, tokenizer).input_ids) <= max_len]


def sft_conversations(tokenizer: CharTokenizer, max_len: int, n_per_task: int, split: str = "train") -> list:
    """The split's instruction conversations that fit `max_len`, rendered with their assistant-only loss masks."""
    return [render(e.messages, tokenizer) for e in fitting(build_instructions(split, n_per_task), tokenizer, max_len)]


def supervised_fine_tune(model: torch.nn.Module, tokenizer: CharTokenizer, spec: SFTSpec, max_len: int,
                         progress: bool = True, seed: int = 0) -> tuple[list[dict], float]:
    """Train `model` in place (ours or a `peft` model: anything whose forward takes input_ids, attention_mask and
    labels) on the SFT conversations; returns (history, seconds)."""
    loader = sft_loader(sft_conversations(tokenizer, max_len, spec.n_per_task), tokenizer.pad_id, spec.batch_size,
                        seed=seed)
    config = TrainConfig(lr=spec.lr, max_steps=spec.max_steps, warmup_steps=spec.warmup_steps, log_every=10,
                         seed=seed, progress=progress)
    trainer = Trainer(model, config, loader)
    start = time.perf_counter()
    trainer.train()
    return trainer.history, time.perf_counter() - start


def sample_replies(model: GPT, tokenizer: CharTokenizer, prompt: Sequence[dict], n: int, temperature: float,
                   seed: int, max_new_tokens: int = 64) -> list[tuple[str, bool]]:
    """Up to `n` sampled replies (text, finished) to one prompt, each short enough that the whole conversation with
    its <|end|> still fits the context. A sample whose text does not encode back to the tokens sampled (it holds
    [UNK] or a special token) is dropped: a preference pair must train on the tokens the model produced."""
    room = model.cfg.max_len - len(render(prompt, tokenizer, add_generation_prompt=True).input_ids) - 1
    if room < 1:
        raise ValueError(f"the prompt leaves no room for a reply in the context of {model.cfg.max_len}")
    out = []
    for i in range(n):
        r = reply(model, tokenizer, prompt, min(max_new_tokens, room), do_sample=True, temperature=temperature,
                  seed=seed + i)
        ids = tokenizer.encode(r.text, add_special=False) if r.text else []
        if len(ids) == r.n_tokens - int(r.finished) and tokenizer.unk_id not in ids:
            out.append((r.text, r.finished))
    return out


def preference_pairs(model: GPT, tokenizer: CharTokenizer, examples: Sequence[Example], n_samples: int,
                     temperature: float, seed: int = 0,
                     reference_when_none_right: bool = False) -> list[PreferencePair]:
    """On-policy pairs: at each point where an example's assistant replies (`assistant.decision_points`: the reply;
    for a tool-using question the call and the answer after the tool's result), `n_samples` replies of `model`,
    judged; the best-judged reply is chosen and a worse one (the worst, ties broken at random) rejected. Points
    whose samples are all judged alike give no pair, unless `reference_when_none_right`: then a point without a
    right sample pairs the data's reply (chosen) with its worst sample."""
    rng = random.Random(seed)
    pairs = []
    for k, example in enumerate(examples):
        for j, (prompt, reference, judge) in enumerate(decision_points(example)):
            samples = sample_replies(model, tokenizer, prompt, n_samples, temperature, seed + 1000 * k + 100 * j)
            judged = {text: judge(text, finished) for text, finished in samples if text}
            if reference_when_none_right and judged and max(judged.values()) < RIGHT and reference not in judged:
                judged[reference] = RIGHT
            if len(set(judged.values())) < 2:
                continue
            best, worst = max(judged.values()), min(judged.values())
            chosen = rng.choice([t for t, s in judged.items() if s == best])
            rejected = rng.choice([t for t, s in judged.items() if s == worst])
            pairs.append(PreferencePair(tuple(prompt), chosen, rejected))
    return pairs


def dpo_tune(policy: GPT, tokenizer: CharTokenizer, pairs: Sequence[PreferencePair], spec: DPOSpec,
             progress: bool = True, seed: int = 0) -> tuple[DPOModel, list[dict], float]:
    """Train `policy` in place with DPO on `pairs` (its starting point frozen as the reference); returns
    (the DPOModel, history, seconds)."""
    dpo = DPOModel(policy, spec.beta)
    loader = preference_loader(pairs, tokenizer, policy.cfg.max_len, spec.batch_size, seed=seed)
    config = TrainConfig(lr=spec.lr, max_steps=spec.max_steps, warmup_steps=min(10, spec.max_steps // 10),
                         weight_decay=0.0, log_every=10, seed=seed, progress=progress)
    trainer = Trainer(dpo, config, loader)
    start = time.perf_counter()
    trainer.train()
    return dpo, trainer.history, time.perf_counter() - start


@torch.no_grad()
def preference_accuracy(policy: GPT, reference: GPT, tokenizer: CharTokenizer, pairs: Sequence[PreferencePair],
                        batch_size: int = 64) -> float:
    """Share of pairs whose chosen reply the policy raised more than the rejected one, relative to the reference
    (the implicit reward margin is positive): DPO's "reward accuracy"; ties are not wins (0 for the reference
    itself)."""
    policy_mode, reference_mode = policy.training, reference.training
    policy.eval(), reference.eval()
    wins = 0
    for batch in preference_loader(pairs, tokenizer, policy.cfg.max_len, batch_size, shuffle=False):
        ratio = sequence_logprobs(policy, **batch) - sequence_logprobs(reference, **batch)
        n = len(ratio) // 2  # chosen rows first, then the rejected ones
        wins += int((ratio[:n] > ratio[n:]).sum())
    policy.train(policy_mode), reference.train(reference_mode)
    return wins / len(pairs)


@torch.no_grad()
def sampled_kl(policy: GPT, reference: GPT, tokenizer: CharTokenizer, examples: Sequence[Example],
               temperature: float = 1.0, seed: int = 0) -> float:
    """KL(policy ‖ reference) per reply, estimated from one sampled reply of the policy per prompt: the mean of
    log π(y|x) − log π_ref(y|x) over the samples' tokens (up to and with <|end|>), in nats."""
    modes = policy.training, reference.training
    policy.eval(), reference.eval()
    end = tokenizer.token_to_id(END)
    total = 0.0
    for k, example in enumerate(examples):
        prompt = render(list(example.prompt), tokenizer, add_generation_prompt=True).input_ids
        out = generate(policy, torch.tensor([prompt]), max_new_tokens=policy.cfg.max_len - len(prompt),
                       stop_ids=(end,), do_sample=True, temperature=temperature, seed=seed + k)[0].tolist()
        reply_ids = out[len(prompt):]
        if end in reply_ids:
            reply_ids = reply_ids[: reply_ids.index(end) + 1]
        x = torch.tensor([prompt + reply_ids])
        mask, completion = torch.ones_like(x), torch.zeros_like(x)
        completion[0, len(prompt):] = 1
        total += float(sequence_logprobs(policy, x, mask, completion)
                       - sequence_logprobs(reference, x, mask, completion))
    policy.train(modes[0]), reference.train(modes[1])
    return total / len(examples)


def assistant_dir(stage: str, profile: str, root: Path | None = None) -> Path:
    """Folder of one assistant stage in the cache."""
    if stage not in STAGES:
        raise ValueError(f"unknown assistant stage {stage!r}; expected one of {STAGES}")
    get_profile(profile)
    return (root or cache_dir("assistant")) / f"{stage}-{profile}"


def _publish(model: GPT, tokenizer: CharTokenizer, history: list[dict], meta: dict, target: Path,
             adapter=None, pairs: Sequence[PreferencePair] | None = None) -> Path:
    from .chat import hf_chat_tokenizer
    from .interop import gpt_to_hf

    with publish(target) as tmp:
        write_model_files(tmp, model, meta, config=model.cfg.to_dict(), tokenizer=tokenizer, history=history)
        gpt_to_hf(model).save_pretrained(tmp / "hf")
        hf_chat_tokenizer(tokenizer).save_pretrained(tmp / "hf")
        if adapter is not None:
            adapter.save_pretrained(tmp / ADAPTER_DIR)
        if pairs is not None:
            (tmp / PAIRS_FILE).write_text(json.dumps([asdict(p) for p in pairs], ensure_ascii=False, indent=1),
                                          encoding="utf-8")
    return target


def load_pairs(path: Path) -> list[PreferencePair]:
    """The preference pairs a DPO stage was trained on (its pairs.json)."""
    return [PreferencePair(tuple(p["prompt"]), p["chosen"], p["rejected"])
            for p in json.loads((Path(path) / PAIRS_FILE).read_text(encoding="utf-8"))]


def train_sft(profile: str = "full", root: Path | None = None, progress: bool = True) -> Path:
    """Fine-tune the profile's chat model on the instruction conversations and publish it as the `sft` stage."""
    profile = get_profile(profile).name
    spec = SFT_SPECS[profile]
    seed_everything(0)
    model, tokenizer = chat_model(profile, progress, spec.dropout)
    history, seconds = supervised_fine_tune(model, tokenizer, spec, model.cfg.max_len, progress)
    meta = {"stage": "sft", "profile": profile, "spec": asdict(spec), "train_seconds": round(seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return _publish(model.cpu().eval(), tokenizer, history, meta, assistant_dir("sft", profile, root))


def train_lora(profile: str = "full", root: Path | None = None, progress: bool = True) -> Path:
    """SFT of the profile's chat model through LoRA adapters (and the chat tokens' embedding rows); publish the
    merged model as the `lora` stage, with the adapter itself in adapter/ (peft's format)."""
    profile = get_profile(profile).name
    spec, sft_spec = LORA_SPECS[profile], SFT_SPECS[profile]
    seed_everything(0)
    base, tokenizer = chat_model(profile, progress, sft_spec.dropout)
    added = list(range(load_pretrained("gpt", profile, progress=progress).tokenizer.vocab_size, tokenizer.vocab_size))
    peft_model = lora_model(base, spec.rank, spec.alpha, spec.target_modules, trainable_tokens=added)
    trainable, total = trainable_share(peft_model)
    history, seconds = supervised_fine_tune(peft_model, tokenizer, replace(sft_spec, lr=spec.lr), base.cfg.max_len,
                                            progress)
    meta = {"stage": "lora", "profile": profile, "spec": {**asdict(spec), "sft": asdict(sft_spec)},
            "trainable_parameters": trainable, "total_parameters": total, "trainable_tokens": added,
            "train_seconds": round(seconds, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    target = assistant_dir("lora", profile, root)
    merged = merge_lora(copy.deepcopy(peft_model).cpu().eval())  # the adapter itself is published too
    return _publish(merged.eval(), tokenizer, history, meta, target, adapter=peft_model)


def train_dpo(profile: str = "full", root: Path | None = None, progress: bool = True) -> Path:
    """Tune the profile's SFT assistant with DPO on its own judged samples and publish it as the `dpo` stage."""
    profile = get_profile(profile).name
    spec = DPO_SPECS[profile]
    sft = load_assistant("sft", profile, root, progress=progress)
    seed_everything(0)
    start = time.perf_counter()
    prompts = fitting(build_instructions("train", spec.n_prompts_per_task, seed=1),  # other conversations than SFT's
                      sft.tokenizer, sft.model.cfg.max_len)
    pairs = preference_pairs(sft.model, sft.tokenizer, prompts, spec.n_samples, spec.temperature,
                             reference_when_none_right=spec.reference_when_none_right)
    sampling = time.perf_counter() - start
    dpo, history, seconds = dpo_tune(sft.model, sft.tokenizer, pairs, spec, progress)
    meta = {"stage": "dpo", "profile": profile, "spec": asdict(spec), "sft_created": sft.meta["created"],
            "n_pairs": len(pairs),
            "sampling_seconds": round(sampling, 1), "train_seconds": round(seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return _publish(dpo.policy.cpu().eval(), sft.tokenizer, history, meta, assistant_dir("dpo", profile, root),
                    pairs=pairs)


@dataclass
class Assistant:
    """A loaded assistant stage: model, chat tokenizer, training history and run facts."""

    model: GPT
    tokenizer: CharTokenizer
    history: list[dict]
    meta: dict
    path: Path


def load_assistant(stage: str = "dpo", profile: str | None = None, root: Path | None = None,
                   train_if_missing: bool = True, progress: bool = True) -> Assistant:
    """Load an assistant stage of a profile from the cache, training it (and the stages before it) first when it
    is missing, was trained with another recipe than the specs hold now, or (DPO) started from another SFT model
    than the one cached now."""
    profile = get_profile(profile).name
    target = assistant_dir(stage, profile, root)  # checks the stage
    spec = {"sft": SFT_SPECS, "lora": LORA_SPECS, "dpo": DPO_SPECS}[stage][profile]
    recorded = {**asdict(spec), "sft": asdict(SFT_SPECS[profile])} if stage == "lora" else asdict(spec)
    recorded = json.loads(json.dumps(recorded))  # as meta.json holds it (tuples become lists)
    train = {"sft": train_sft, "lora": train_lora, "dpo": train_dpo}[stage]

    def read(folder: Path) -> Assistant:
        model, tokenizer, meta = read_model_folder(folder, GPTConfig, GPT)
        return Assistant(model, tokenizer, read_json(folder, HISTORY_FILE), meta, folder)

    def stale(folder: Path) -> bool:
        meta = read_meta(folder)
        if meta.get("spec") != recorded:
            return True
        if stage == "dpo":
            sft = published(assistant_dir("sft", profile, root))
            return not is_cached(sft) or read_meta(sft).get("created") != meta.get("sft_created")
        return False

    return load_or_train(target, lambda: train(profile, root, progress), read, what=f"assistant ({stage})",
                         train_if_missing=train_if_missing, stale=stale,
                         missing_hint=f"; run `bigmodel-course {stage} --profile {profile}`")
