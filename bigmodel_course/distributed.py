"""Distributed data-parallel training with PyTorch DDP, launched through torchrun (gloo on CPU, nccl on CUDA).

`bigmodel-course train ... --nproc 2` re-runs the same command under ``python -m torch.distributed.run``;
torchrun starts the processes and gives each RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous address in its
environment.  Every process builds the same model (same seed), a DistributedSampler hands it its share of every
global batch, and DistributedDataParallel averages the gradients in the backward pass, so all processes take
the same optimizer step as one process on the whole global batch would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_model
from torch.utils.data import DataLoader, DistributedSampler

TASKS = ("lm", "sentiment")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, local rank, number of processes, backend and device."""

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and writes files."""
        return self.rank == 0


def default_backend() -> str:
    """nccl when CUDA GPUs are present, gloo on CPUs."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def under_torchrun() -> bool:
    """True inside a process started by torchrun (it sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def init_distributed(backend: str | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment; a single process without torchrun gets none."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return DistEnv(0, 0, 1, None, device)
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown backend {backend!r}; expected 'gloo' or 'nccl'")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = "cpu"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("the nccl backend needs CUDA GPUs; use gloo on CPUs")
        torch.cuda.set_device(local_rank)  # one GPU per process
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistEnv(dist.get_rank(), local_rank, dist.get_world_size(), backend, device)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str = "127.0.0.1", master_port: int = 29500,
                     module: str = "bigmodel_course.cli") -> list[str]:
    """The torchrun command line that runs `python -m module *args` in nproc processes on each of nnodes machines."""
    for name, value in (("nproc", nproc), ("nnodes", nnodes)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be in [0, {nnodes}), got {node_rank}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        cmd += ["--standalone"]  # rendezvous on a free local port
    else:
        cmd += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                f"--master_port={master_port}"]
    return cmd + ["-m", module, *args]


def launch(args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
           master_port: int = 29500) -> int:
    """Run `bigmodel-course *args` under torchrun and wait; returns its exit status."""
    cmd = torchrun_command(args, nproc, nnodes, node_rank, master_addr, master_port)
    return subprocess.run(cmd, check=False).returncode


# ---------------------------------------------------------------- the training task

@dataclass(frozen=True)
class TrainSpec:
    """Data and model sizes of `train_task` in one profile."""

    n_texts: int | None  # texts of the corpus (lm) or training reviews (sentiment); None = all
    max_len: int  # block length (lm) or truncation length (sentiment)
    d_model: int
    n_heads: int
    n_layers: int


TRAIN_SPECS = {
    "ci": TrainSpec(1500, 64, 64, 2, 2),
    "full": TrainSpec(6000, 128, 128, 4, 4),
}


def _task_data(task: str, spec: TrainSpec):
    """(dataset, tokenizer) of a task: corpus blocks for 'lm', training reviews for 'sentiment'."""
    from .data import ClassificationDataset, LMBlockDataset, review_splits
    from .pretrained import corpus, gpt_stream
    from .tokenization import CharTokenizer

    if task == "lm":
        texts = corpus(spec.n_texts)
        tokenizer = CharTokenizer.train(texts, min_freq=2)
        return LMBlockDataset(gpt_stream(texts, tokenizer), spec.max_len), tokenizer
    splits = review_splits(seed=0)
    texts, labels = splits.train_texts, splits.train_labels
    if spec.n_texts is not None:
        texts, labels = texts[: spec.n_texts], labels[: spec.n_texts]
    tokenizer = CharTokenizer.train(texts, min_freq=2)
    return ClassificationDataset(texts, labels, tokenizer, spec.max_len), tokenizer


def train_task(task: str, profile: str, steps: int, out: str | os.PathLike, global_batch: int = 32,
               lr: float = 1e-3, seed: int = 0, dropout: float = 0.0, grad_accum: int = 1, bf16: bool = False,
               gradient_checkpointing: bool = False, threads: int | None = None, progress: bool = True) -> dict:
    """Train our GPT on `task` ('lm' or 'sentiment') for `steps` steps of `global_batch` examples, in this process
    or as one rank of a torchrun job; rank 0 writes model.safetensors and meta.json to `out` and returns the meta.

    The global batch is split evenly over processes and accumulation micro-batches, so the same command with
    any --nproc takes the same optimizer steps (up to float rounding).
    """
    from .training import Trainer, TrainConfig
    from .transformer import GPT, GPTConfig, GPTForSequenceClassification, set_gradient_checkpointing
    from .utils import get_profile, seed_everything

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if threads:
        torch.set_num_threads(threads)
    env = init_distributed()
    try:
        per_step = env.world_size * grad_accum
        if global_batch % per_step:
            raise ValueError(f"global batch {global_batch} is not divisible by {env.world_size} processes x "
                             f"{grad_accum} accumulation steps")
        spec = TRAIN_SPECS[get_profile(profile).name]
        seed_everything(seed)
        data, tokenizer = _task_data(task, spec)
        sampler = DistributedSampler(data, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        collate = getattr(data, "collate", None)
        loader = DataLoader(data, batch_size=global_batch // per_step, sampler=sampler, drop_last=True,
                            collate_fn=collate)
        cfg = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=spec.max_len, d_model=spec.d_model,
                        n_heads=spec.n_heads, n_layers=spec.n_layers, dropout=dropout, attn_dropout=dropout,
                        pad_token_id=tokenizer.pad_id)
        model = GPT(cfg) if task == "lm" else GPTForSequenceClassification(cfg)
        if gradient_checkpointing:
            set_gradient_checkpointing(model)
        config = TrainConfig(lr=lr, max_steps=steps, warmup_steps=0, grad_accum_steps=grad_accum, bf16=bf16,
                             seed=seed, log_every=1, device=env.device, progress=progress)
        trainer = Trainer(model, config, loader)
        warmup = min(2, steps - 1)  # the first steps pay for lazy initialisation; time the rest
        if warmup:
            trainer.train(steps=warmup)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        meta = {"task": task, "profile": profile, "world_size": env.world_size, "backend": env.backend,
                "device": env.device, "threads_per_process": torch.get_num_threads(), "global_batch": global_batch,
                "per_process_batch": global_batch // per_step, "grad_accum": grad_accum, "steps": trainer.step,
                "seconds_per_step": seconds / max(1, steps - warmup), "bf16": bf16,
                "gradient_checkpointing": gradient_checkpointing, "spec": asdict(spec),
                "losses": [round(h["train_loss"], 6) for h in trainer.history if "train_loss" in h],
                "grad_norms": [round(h["grad_norm"], 6) for h in trainer.history if "grad_norm" in h]}
        if env.is_main:
            out = Path(out)
            out.mkdir(parents=True, exist_ok=True)
            save_model(model.cpu(), str(out / "model.safetensors"))
            (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return meta
    finally:
        shutdown()
