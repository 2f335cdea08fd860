"""One trainer for every chapter: AdamW, warm-up + cosine schedule, clipping, accumulation, bf16, checkpoints.

Decisions, in short:

* Weight decay applies to parameters with two or more dimensions (Linear weights, embedding tables);
  biases and LayerNorm weights (all 1-D parameters) get none.  Tied weights appear once.
* Data order is owned by the trainer: before each epoch it gives the DataLoader's shuffling
  sampler a generator seeded by ``(seed, epoch)`` (or calls ``sampler.set_epoch``), so an epoch's
  order never depends on the global RNG.  The trainer records ``epoch`` and ``batch_in_epoch``
  (micro-batches consumed); on resume it re-creates that epoch's order and skips the consumed
  batches (they are loaded and dropped).  Micro-batches flow across epoch boundaries as one stream.
* Checkpoints (atomic safetensors directories, verified on load) live in `checkpoints`; the
  trainer's JSON state holds step, data position, scheduler, history, early-stopping state,
  RNG states and config.
* Data-parallel training: when a `torch.distributed` process group with more than one process is
  initialised (see `distributed.py`), the trainer wraps the model in DistributedDataParallel (gradients
  averaged across processes, no all-reduce on accumulation micro-batches but the last), logs the loss
  averaged over all processes, and only rank 0 shows progress and writes checkpoints.  Give each process
  its share of every global batch with a DistributedSampler.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm  # plain text bars: tqdm.auto warns in Jupyter without ipywidgets

from . import checkpoints
from .checkpoints import rng_state
from .utils import get_device, seed_everything

# trainer attributes restored from a checkpoint's state JSON
_RESUME_KEYS = ("step", "epoch", "batch_in_epoch", "best_metric", "best_step", "bad_evals", "should_stop", "history")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; give either max_steps or epochs."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    max_steps: int | None = None  # optimizer steps; when None, derived from epochs
    epochs: int | None = None
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0  # None: no clipping
    bf16: bool = False  # torch.autocast(..., dtype=torch.bfloat16)
    eval_every: int | None = None  # optimizer steps; None: evaluate only at the end
    early_stopping_patience: int | None = None  # evaluations without improvement; None: off
    monitor: str = "eval_loss"
    mode: str = "min"
    # at the end, load the weights of the best evaluation (kept in memory, not in checkpoints)
    restore_best: bool = False
    log_every: int = 10
    save_every: int | None = None  # with Trainer(checkpoint_dir=...): save every n steps and at the end
    seed: int = 0
    device: str | None = None  # None: utils.get_device()
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of max_steps and epochs, got {self.max_steps} and {self.epochs}")
        for name in ("max_steps", "epochs", "grad_accum_steps", "log_every", "eval_every", "save_every",
                     "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build a config from a dict, rejecting unknown keys."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**data)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on parameters with >= 2 dims, none on biases and norm weights (1-D)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # yields a tied parameter once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier after `step` optimizer steps: linear warm-up from 0, then cosine decay to min_lr_ratio."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_lambda`; call `.step()` once per optimizer step."""
    def fn(step: int) -> float:
        return lr_lambda(step, warmup_steps, total_steps, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def save_history(history: list[dict], path: str | os.PathLike) -> Path:
    """Write a training history (list of dicts) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def load_history(path: str | os.PathLike) -> list[dict]:
    """Read a history written by `save_history`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: a history must be a JSON list of objects")
    return data


def plot_history(history: list[dict], ax=None, title: str | None = None):
    """Draw training (and evaluation) loss against the optimizer step, in the house style."""
    import matplotlib.pyplot as plt

    from .plotting import use_house_style

    use_house_style()
    train = [(r["step"], r["train_loss"]) for r in history if r.get("train_loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in history if r.get("eval_loss") is not None]
    if not train and not evals:
        raise ValueError("history holds no 'train_loss' or 'eval_loss' values to plot")
    if ax is None:
        _, ax = plt.subplots()
    if train:
        ax.plot(*zip(*train), label="训练损失")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="验证损失")
    ax.set_xlabel("优化步数")
    ax.set_ylabel("损失")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def world_info() -> tuple[int, int]:
    """(world size, rank) of the initialised torch.distributed process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


# ---------------------------------------------------------------- the trainer

class Trainer:
    """Train a model whose forward(**batch) returns an object with `.loss` (and `.logits`)."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_loader,
        eval_loader=None,
        metrics_fn: Callable[[Tensor, Tensor | None], dict] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        if eval_loader is None and (config.eval_every or config.early_stopping_patience or metrics_fn
                                    or config.restore_best):
            raise ValueError("eval_every, early_stopping_patience, restore_best and metrics_fn need an eval_loader")
        if config.save_every and checkpoint_dir is None:
            raise ValueError("save_every needs a checkpoint_dir")
        self.config, self.train_loader, self.eval_loader = config, train_loader, eval_loader
        self.metrics_fn = metrics_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device = get_device(config.device)
        self.model = model.to(self.device)
        self.world_size, self.rank = world_info()
        self.is_main = self.rank == 0
        self.parallel_model: nn.Module = self.model  # what training forward passes call
        if self.world_size > 1:
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self.parallel_model = DistributedDataParallel(self.model, device_ids=ids)
        self.max_steps = config.max_steps or self._steps_from_epochs()
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps
        )
        self.scheduler = warmup_cosine_scheduler(
            self.optimizer, config.warmup_steps, self.max_steps, config.min_lr_ratio
        )
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # current pass over train_loader
        self.batch_in_epoch = 0  # micro-batches of this epoch already consumed
        self.history: list[dict] = []
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.should_stop = False
        self._best_weights: dict[str, Tensor] | None = None
        self._seeded = False
        self._stream: Iterator | None = None

    def _steps_from_epochs(self) -> int:
        try:
            n = len(self.train_loader)
        except TypeError:
            raise ValueError("epochs needs a train_loader with a length; give max_steps instead") from None
        steps = self.config.epochs * n // self.config.grad_accum_steps
        if steps < 1:
            raise ValueError(
                f"epochs={self.config.epochs} of {n} batches is less than one step of "
                f"grad_accum_steps={self.config.grad_accum_steps} micro-batches"
            )
        return steps

    # ----------------------------------------------------------- data
    def replace_train_loader(self, loader) -> None:
        """Go on training from the start of another loader (a second phase, e.g. longer sequences); the step count,
        optimizer and schedule carry on."""
        self.train_loader, self._stream, self.epoch, self.batch_in_epoch = loader, None, 0, 0

    def _prepare_epoch(self, epoch: int) -> None:
        """Make epoch `epoch`'s order a function of (seed, epoch) only, not of the global RNG."""
        loader = self.train_loader
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(loader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif isinstance(sampler, RandomSampler):
            sampler.generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 2 * epoch)
        if isinstance(loader, DataLoader):  # worker base seed, otherwise drawn from the global RNG
            loader.generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 2 * epoch + 1)

    def _batches(self) -> Iterator:
        """Endless stream of micro-batches, epoch after epoch, starting at the recorded position."""
        while True:
            self._prepare_epoch(self.epoch)
            it = iter(self.train_loader)
            yielded = False
            for _ in range(self.batch_in_epoch):  # resume: skip what was consumed before
                next(it, None)
                yielded = True
            for batch in it:
                self.batch_in_epoch += 1
                yielded = True
                yield batch
            if not yielded:
                raise ValueError("train_loader yielded no batches")
            self.epoch += 1
            self.batch_in_epoch = 0

    def _to_device(self, batch) -> dict:
        if not isinstance(batch, dict):
            raise ValueError(
                f"a batch must be a dict of tensors (passed as model(**batch)), got {type(batch).__name__}"
            )
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _forward(self, batch: dict, model: nn.Module | None = None):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            out = (model or self.model)(**batch)
        if getattr(out, "loss", None) is None:
            raise ValueError("the model returned no loss: pass labels in the batch")
        return out

    # ----------------------------------------------------------- training
    def _record(self, **values) -> None:
        if self.history and self.history[-1]["step"] == self.step:
            self.history[-1].update(values)
        else:
            self.history.append({"step": self.step, **values})

    def epochs_done(self) -> float:
        """Passes over train_loader completed so far, the one in progress as a fraction (15.0 after 15 whole
        epochs, 3.25 a quarter into the fourth); whole passes only for a loader without a length.

        This is the `epoch` of a history record; the resume state keeps the 0-based `epoch` of the pass in
        progress and its `batch_in_epoch` unchanged."""
        try:
            n = len(self.train_loader)
        except TypeError:
            return float(self.epoch)
        return self.epoch + self.batch_in_epoch / n if n else float(self.epoch)

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over grad_accum_steps micro-batches; returns (mean loss, grad norm)."""
        k = self.config.grad_accum_steps
        if self._stream is None:
            self._stream = self._batches()
        self.model.train()
        total = torch.zeros((), device=self.device)
        for i in range(k):
            last = i == k - 1
            sync = nullcontext() if last or self.world_size == 1 else self.parallel_model.no_sync()
            with sync:  # DDP all-reduces the gradients once, in the backward pass of the last micro-batch
                out = self._forward(self._to_device(next(self._stream)), self.parallel_model)
                (out.loss / k).backward()
            total += out.loss.detach().float()
        if self.world_size > 1:  # log the loss of the whole global batch, not of this process's share
            dist.all_reduce(total)
            total /= self.world_size
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.config.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = float(total) / k
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {self.step}")
        return loss, float(norm)

    def train(self, steps: int | None = None) -> list[dict]:
        """Train until max_steps, `steps` more steps or early stopping (a fresh start seeds RNGs); returns history."""
        if steps is not None and (not isinstance(steps, int) or steps <= 0):
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        cfg = self.config
        if not self._seeded:
            seed_everything(cfg.seed)
            self._seeded = True
        end = self.max_steps if steps is None else min(self.max_steps, self.step + steps)
        losses, norms = [], []
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not (cfg.progress and self.is_main), desc="训练")
        try:
            while self.step < end and not self.should_stop:
                lr = self.scheduler.get_last_lr()[0]
                loss, norm = self.train_step()
                losses.append(loss)
                norms.append(norm)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.max_steps:
                    self._record(epoch=self.epochs_done(), lr=lr, train_loss=sum(losses) / len(losses),
                                 grad_norm=max(norms))
                    bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", lr=f"{lr:.2e}")
                    losses, norms = [], []
                if self.eval_loader is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == self.max_steps
                ):
                    self._evaluate_and_check()
                if self.checkpoint_dir is not None and self.is_main and (
                    (cfg.save_every and self.step % cfg.save_every == 0) or self.step == self.max_steps
                    or self.should_stop
                ):
                    self.save_checkpoint(self.checkpoint_dir)
        finally:
            bar.close()
        if cfg.restore_best and self._best_weights is not None and (self.step >= self.max_steps or self.should_stop):
            self.model.load_state_dict(self._best_weights)
            self._record(restored_best_step=self.best_step)
        return self.history

    def _evaluate_and_check(self) -> None:
        """Evaluate, record the metrics and update the early-stopping state."""
        metrics = self.evaluate()
        self._record(**metrics)
        if self.config.monitor not in metrics:
            raise ValueError(f"monitored metric {self.config.monitor!r} not among {sorted(metrics)}")
        value = metrics[self.config.monitor]
        better = self.best_metric is None or (
            value < self.best_metric if self.config.mode == "min" else value > self.best_metric
        )
        if better:
            self.best_metric, self.best_step, self.bad_evals = value, self.step, 0
            if self.config.restore_best:
                self._best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
            patience = self.config.early_stopping_patience
            if patience is not None and self.bad_evals >= patience:
                self.should_stop = True
                self._record(early_stopped=True)

    @torch.no_grad()
    def evaluate(self, loader=None) -> dict:
        """Mean loss over the eval loader (weighted by batch size), plus `metrics_fn` on all logits."""
        loader = self.eval_loader if loader is None else loader
        if loader is None:
            raise ValueError("no eval_loader to evaluate on")
        was_training = self.model.training
        self.model.eval()
        total, count, logits, labels = 0.0, 0, [], []
        try:
            for batch in tqdm(loader, desc="评估", leave=False, disable=not (self.config.progress and self.is_main)):
                batch = self._to_device(batch)
                out = self._forward(batch)
                n = next((v.shape[0] for v in batch.values() if isinstance(v, Tensor) and v.dim()), 1)
                total += float(out.loss) * n
                count += n
                if self.metrics_fn is not None:
                    logits.append(out.logits.float().cpu())
                    if "labels" in batch:
                        labels.append(batch["labels"].cpu())
        finally:
            self.model.train(was_training)
        if count == 0:
            raise ValueError("eval_loader yielded no batches")
        metrics = {"eval_loss": total / count}
        if self.metrics_fn is not None:
            extra = self.metrics_fn(torch.cat(logits), torch.cat(labels) if labels else None)
            metrics.update({k if k.startswith("eval_") else f"eval_{k}": float(v) for k, v in extra.items()})
        return metrics

    # ----------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """Everything but tensors needed to resume, as JSON-friendly data."""
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric, "best_step": self.best_step,
            "bad_evals": self.bad_evals, "should_stop": self.should_stop,
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "history": self.history,
            "rng": rng_state(),
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write model, optimizer and trainer state to directory `path` atomically; returns the path."""
        return checkpoints.write_checkpoint(path, self.model, self.optimizer, self.state())

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, step, data position, history and RNG states from `path`."""
        n_groups = len(self.optimizer.param_groups)

        def read_state(state: dict) -> tuple[dict, dict]:
            scheduler_sd = dict(state["scheduler"], lr_lambdas=[None] * n_groups)
            return scheduler_sd, {k: state[k] for k in _RESUME_KEYS}

        scheduler_sd, position = checkpoints.load_checkpoint(path, self.model, self.optimizer, self.device,
                                                             read_state)
        self.scheduler.load_state_dict(scheduler_sd)
        for key, value in position.items():
            setattr(self, key, value)
        self._seeded, self._stream = True, None
