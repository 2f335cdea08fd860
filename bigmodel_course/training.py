"""One trainer for every chapter: AdamW, warm-up + cosine schedule, clipping, accumulation, bf16, checkpoints.

Decisions, in short:

* Weight decay applies to parameters with two or more dimensions (Linear weights, embedding tables);
  biases and LayerNorm weights (all 1-D parameters) get none.  Tied weights appear once.
* Data order is owned by the trainer: before each epoch it gives the DataLoader's shuffling
  sampler a generator seeded by ``(seed, epoch)`` (or calls ``sampler.set_epoch``), so an epoch's
  order never depends on the global RNG.  The trainer records ``epoch`` and ``batch_in_epoch``
  (micro-batches consumed); on resume it re-creates that epoch's order and skips the consumed
  batches (they are loaded and dropped).  Micro-batches flow across epoch boundaries as one stream.
* A checkpoint is a directory: ``model.safetensors`` (weights, shared tensors stored once),
  ``optimizer.safetensors`` (optimizer state tensors) and ``trainer_state.json`` (step, data
  position, scheduler, history, early-stopping state, RNG states, config, file checksums).
  It is written into a temporary sibling directory, fsynced, then renamed over the old one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from .utils import get_device, seed_everything

FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model being trained."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"checkpoint {self.path}: {problem}")


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


# ---------------------------------------------------------------- checkpoint helpers

def _rng_state() -> dict:
    """Python, NumPy and torch RNG states as JSON-friendly lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _rng_setter(state: dict) -> Callable[[], None]:
    """Parse RNG states written by `_rng_state`; the returned function installs them."""
    version, internal, gauss = state["python"]
    py_state = (version, tuple(internal), gauss)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np_state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    torch_state = torch.tensor(state["torch"], dtype=torch.uint8)
    cuda = state.get("cuda")
    cuda_states = [torch.tensor(s, dtype=torch.uint8) for s in cuda] if cuda else None

    def install() -> None:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

    return install


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_optimizer_state(sd: dict) -> tuple[dict[str, Tensor], dict]:
    """Optimizer state_dict -> (tensors for safetensors, the JSON-friendly rest)."""
    tensors, state = {}, {}
    for idx, entry in sd["state"].items():
        state[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
                state[str(idx)][key] = "__tensor__"
            else:
                state[str(idx)][key] = value
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _join_optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Inverse of `_split_optimizer_state`."""
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            k: tensors[f"state.{idx}.{k}"] if v == "__tensor__" else v for k, v in entry.items()
        }
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _write_checkpoint_files(tmp: Path, model: nn.Module, opt_tensors: dict, state: dict) -> None:
    """Write the three checkpoint files into `tmp` and fsync them (state JSON last)."""
    safetensors.torch.save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    safetensors.torch.save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": "pt"})
    state["files"] = {
        name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        for name in (MODEL_FILE, OPTIMIZER_FILE)
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        _fsync(tmp / name)
    _fsync(tmp)


def _check_model_tensors(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Raise CheckpointError unless the saved weights have exactly this model's names and shapes."""
    expected = model.state_dict()
    problems = [f"unexpected tensor {k!r}" for k in tensors if k not in expected]
    problems += [
        f"{k!r} has shape {tuple(t.shape)}, the model expects {tuple(expected[k].shape)}"
        for k, t in tensors.items() if k in expected and t.shape != expected[k].shape
    ]
    stored = {(expected[k].data_ptr(), expected[k].shape) for k in tensors if k in expected}
    problems += [
        f"missing tensor {k!r}" for k, t in expected.items()
        if k not in tensors and (t.data_ptr(), t.shape) not in stored  # tied aliases are stored once
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(path / MODEL_FILE, "weights do not fit this model: " + "; ".join(problems[:5]) + more)


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
        if eval_loader is None and (config.eval_every or config.early_stopping_patience or metrics_fn):
            raise ValueError("eval_every, early_stopping_patience and metrics_fn need an eval_loader")
        if config.save_every and checkpoint_dir is None:
            raise ValueError("save_every needs a checkpoint_dir")
        self.config, self.train_loader, self.eval_loader = config, train_loader, eval_loader
        self.metrics_fn = metrics_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device = get_device(config.device)
        self.model = model.to(self.device)
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
    def _prepare_epoch(self, epoch: int) -> None:
        """Make epoch `epoch`'s order a function of (seed, epoch) only, not of the global RNG."""
        loader = self.train_loader
        sampler = getattr(loader, "sampler", None)
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

    def _forward(self, batch: dict):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            out = self.model(**batch)
        if getattr(out, "loss", None) is None:
            raise ValueError("the model returned no loss: pass labels in the batch")
        return out

    # ----------------------------------------------------------- training
    def _record(self, **values) -> None:
        if self.history and self.history[-1]["step"] == self.step:
            self.history[-1].update(values)
        else:
            self.history.append({"step": self.step, **values})

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over grad_accum_steps micro-batches; returns (mean loss, grad norm)."""
        k = self.config.grad_accum_steps
        if self._stream is None:
            self._stream = self._batches()
        self.model.train()
        total = torch.zeros((), device=self.device)
        for _ in range(k):
            out = self._forward(self._to_device(next(self._stream)))
            (out.loss / k).backward()
            total += out.loss.detach().float()
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
        """Train until max_steps, `steps` more steps or early stopping (seeds RNGs on a fresh start); returns history."""
        if steps is not None and (not isinstance(steps, int) or steps <= 0):
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        cfg = self.config
        if not self._seeded:
            seed_everything(cfg.seed)
            self._seeded = True
        end = self.max_steps if steps is None else min(self.max_steps, self.step + steps)
        losses, norms = [], []
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not cfg.progress, desc="训练")
        try:
            while self.step < end and not self.should_stop:
                lr = self.scheduler.get_last_lr()[0]
                loss, norm = self.train_step()
                losses.append(loss)
                norms.append(norm)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.max_steps:
                    self._record(epoch=self.epoch, lr=lr, train_loss=sum(losses) / len(losses),
                                 grad_norm=max(norms))
                    bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", lr=f"{lr:.2e}")
                    losses, norms = [], []
                if self.eval_loader is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == self.max_steps
                ):
                    self._evaluate_and_check()
                if self.checkpoint_dir is not None and (
                    (cfg.save_every and self.step % cfg.save_every == 0) or self.step == self.max_steps
                    or self.should_stop
                ):
                    self.save_checkpoint(self.checkpoint_dir)
        finally:
            bar.close()
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
            for batch in tqdm(loader, desc="评估", leave=False, disable=not self.config.progress):
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
            "format_version": FORMAT_VERSION,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric, "best_step": self.best_step,
            "bad_evals": self.bad_evals, "should_stop": self.should_stop,
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "history": self.history,
            "rng": _rng_state(),
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write model, optimizer and trainer state to directory `path` atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        old = path.parent / f".{path.name}.previous"
        opt_tensors, opt_meta = _split_optimizer_state(self.optimizer.state_dict())
        state = dict(self.state(), optimizer=opt_meta)
        tmp.mkdir()
        try:
            _write_checkpoint_files(tmp, self.model, opt_tensors, state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.rename(path, old)  # the previous good checkpoint stays until the new one is in place
        os.rename(tmp, path)
        _fsync(path.parent)
        shutil.rmtree(old, ignore_errors=True)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, step, data position, history and RNG states from `path`."""
        path = Path(path)
        old = path.parent / f".{path.name}.previous"
        if not path.exists() and old.is_dir():  # interrupted between the two renames of a save
            path = old
        state, opt_tensors, model_tensors = read_checkpoint(path)
        _check_model_tensors(self.model, model_tensors, path)
        try:
            opt_sd = _join_optimizer_state(opt_tensors, state["optimizer"])
            self._check_optimizer_state(opt_sd, path)
            scheduler_sd = dict(state["scheduler"], lr_lambdas=[None] * len(self.optimizer.param_groups))
            position = {k: state[k] for k in ("step", "epoch", "batch_in_epoch", "best_metric", "best_step",
                                               "bad_evals", "should_stop", "history")}
            set_rng = _rng_setter(state["rng"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path / STATE_FILE, f"malformed trainer state ({type(e).__name__}: {e})") from None
        # everything checked: now change the trainer
        safetensors.torch.load_model(self.model, str(path / MODEL_FILE), strict=True, device=str(self.device))
        self.optimizer.load_state_dict(opt_sd)
        self.scheduler.load_state_dict(scheduler_sd)
        for key, value in position.items():
            setattr(self, key, value)
        set_rng()
        self._seeded, self._stream = True, None

    def _check_optimizer_state(self, sd: dict, path: Path) -> None:
        """Raise CheckpointError unless the optimizer state fits this trainer's parameters."""
        groups = self.optimizer.param_groups
        saved = sd["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in groups]:
            raise CheckpointError(
                path / STATE_FILE,
                f"optimizer groups hold {[len(g['params']) for g in saved]} parameters, this model "
                f"{[len(g['params']) for g in groups]}",
            )
        params = {i: p for g_saved, g in zip(saved, groups) for i, p in zip(g_saved["params"], g["params"])}
        for idx, entry in sd["state"].items():
            if idx not in params:
                raise CheckpointError(path / OPTIMIZER_FILE, f"state for unknown parameter index {idx}")
            for key, value in entry.items():
                if isinstance(value, Tensor) and value.dim() and value.shape != params[idx].shape:
                    raise CheckpointError(
                        path / OPTIMIZER_FILE,
                        f"state.{idx}.{key} has shape {tuple(value.shape)}, the parameter {tuple(params[idx].shape)}",
                    )


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, Tensor], dict[str, Tensor]]:
    """Read and verify a checkpoint directory; returns (state JSON, optimizer tensors, model tensors)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "no checkpoint here (directory missing)")
    missing = [n for n in (STATE_FILE, MODEL_FILE, OPTIMIZER_FILE) if not (path / n).is_file()]
    if missing:
        raise CheckpointError(path, f"incomplete, missing {', '.join(missing)}")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path / STATE_FILE, f"not valid JSON ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise CheckpointError(path / STATE_FILE, "not a trainer state (no 'files' entry)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path / STATE_FILE, f"format_version {state.get('format_version')!r}, "
                                                 f"expected {FORMAT_VERSION}")
    tensors = {}
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        file, expected = path / name, state["files"].get(name)
        if not isinstance(expected, dict):
            raise CheckpointError(path / STATE_FILE, f"no size and checksum recorded for {name}")
        size = file.stat().st_size
        if size != expected.get("bytes"):
            raise CheckpointError(file, f"{size} bytes, expected {expected.get('bytes')} (truncated or replaced)")
        if _sha256(file) != expected.get("sha256"):
            raise CheckpointError(file, "checksum mismatch (corrupt file)")
        try:
            tensors[name] = safetensors.torch.load_file(str(file))
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise CheckpointError(file, f"not a readable safetensors file ({e})") from None
    return state, tensors[OPTIMIZER_FILE], tensors[MODEL_FILE]
