"""Trainer tests: accumulation, exact resume, schedule, clipping, early stopping (checkpoints: test_checkpoints)."""

import json

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bigmodel_course.checkpoints import read_checkpoint
from bigmodel_course.training import (
    Trainer, TrainConfig, load_history, lr_lambda, param_groups, plot_history, save_history,
)
from bigmodel_course.transformer import GPT, GPTConfig, ModelOutput


class Tiny(nn.Module):
    """Linear + LayerNorm + dropout + head; mean cross-entropy loss."""

    def __init__(self, d_in: int = 6, n_out: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.lin, self.norm = nn.Linear(d_in, 8), nn.LayerNorm(8)
        self.drop, self.head = nn.Dropout(dropout), nn.Linear(8, n_out)

    def forward(self, x, labels=None):
        logits = self.head(self.drop(self.norm(self.lin(x))))
        return ModelOutput(logits=logits, loss=None if labels is None else F.cross_entropy(logits, labels))


class Dicts(Dataset):
    def __init__(self, **tensors):
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


def cls_data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Dicts(x=torch.randn(n, 6, generator=g), labels=torch.randint(0, 3, (n,), generator=g))


def lm_data(n=10, seed=2):
    ids = torch.randint(0, 50, (n, 12), generator=torch.Generator().manual_seed(seed))
    return Dicts(input_ids=ids, labels=ids.clone())


def tiny_gpt(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, max_len=16, d_model=32, n_heads=4, n_layers=2,
                         dropout=dropout, attn_dropout=dropout))


def cfg(**kw):
    base = dict(max_steps=5, lr=1e-2, device="cpu", progress=False, log_every=1)
    return TrainConfig(**{**base, **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ config, groups, schedule

@pytest.mark.parametrize("bad, field", [
    (dict(lr=0), "lr"), (dict(weight_decay=-1), "weight_decay"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(grad_accum_steps=0), "grad_accum_steps"), (dict(max_grad_norm=0), "max_grad_norm"),
    (dict(mode="best"), "mode"), (dict(warmup_steps=-1), "warmup_steps"), (dict(epochs=2), "epochs"),
    (dict(max_steps=2.5), "max_steps"), (dict(min_lr_ratio=2), "min_lr_ratio"),
])
def test_config_rejects_bad_values(bad, field):
    with pytest.raises(ValueError, match=field):
        cfg(**bad)


def test_config_json_round_trip():
    c = cfg(betas=(0.8, 0.95), bf16=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**c.to_dict(), "lrr": 1})


def test_param_groups_no_decay_on_biases_and_norms():
    model = tiny_gpt()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = {id(p) for p in decay["params"]}
    assert id(model.lm_head.weight) in ids or id(model.transformer.embeddings.word.weight) in ids
    layer = model.transformer.layers[0]
    no_ids = {id(p) for p in no_decay["params"]}
    assert {id(layer.norm1.weight), id(layer.norm1.bias), id(layer.ffn.fc1.bias)} <= no_ids
    n_unique = len({id(p) for p in model.parameters()})  # tied LM head counted once
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique


def test_warmup_cosine_values():
    assert lr_lambda(0, 10, 110, 0.1) == 0.0
    assert lr_lambda(5, 10, 110, 0.1) == pytest.approx(0.5)
    assert lr_lambda(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_lambda(60, 10, 110, 0.1) == pytest.approx(0.55)  # half-way: midpoint of 1 and the floor
    assert lr_lambda(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_lambda(500, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_lambda(0, 0, 10) == 1.0


@pytest.mark.parametrize("warmup, total", [(0, 50), (10, 110), (7, 8), (5, 5)])
def test_warmup_cosine_equals_transformers_schedule(warmup, total):
    """With no floor, lr_lambda is transformers' get_cosine_schedule_with_warmup on steps 0..total."""
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, warmup, total).lr_lambdas[0]
    for step in range(total + 1):
        assert lr_lambda(step, warmup, total) == pytest.approx(ref(step), abs=1e-12), step


def test_warmup_cosine_floor_is_an_affine_map_of_transformers_schedule():
    """Our floor r rescales the cosine part to r + (1 - r)·cosine; warm-up is unchanged (both start at 0). After
    total_steps ours stays at the floor, while transformers' cosine would climb back up."""
    from transformers import get_cosine_schedule_with_warmup

    warmup, total, r = 10, 110, 0.1
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, warmup, total).lr_lambdas[0]
    for step in range(warmup):
        assert lr_lambda(step, warmup, total, r) == pytest.approx(ref(step), abs=1e-12)
    for step in range(warmup, total + 1):
        assert lr_lambda(step, warmup, total, r) == pytest.approx(r + (1 - r) * ref(step), abs=1e-12)
    assert ref(total + 50) > ref(total) and lr_lambda(total + 50, warmup, total, r) == pytest.approx(r)


def test_trainer_follows_the_schedule():
    loader = DataLoader(cls_data(), batch_size=4)
    t = Trainer(Tiny(), cfg(max_steps=8, warmup_steps=2, min_lr_ratio=0.0), loader)
    t.train()
    lrs = [r["lr"] for r in t.history]
    expected = [1e-2 * lr_lambda(s, 2, 8) for s in range(8)]
    assert lrs == pytest.approx(expected)


def test_a_replaced_loader_is_read_from_its_start_and_the_schedule_carries_on():
    seen = []

    class Recording(Trainer):
        def _to_device(self, batch):
            seen.append(batch["x"].shape[0])
            return super()._to_device(batch)

    t = Recording(Tiny(), cfg(max_steps=6, warmup_steps=2, min_lr_ratio=0.0), DataLoader(cls_data(), batch_size=4))
    t.train(steps=3)
    t.replace_train_loader(DataLoader(cls_data(), batch_size=8))
    t.train()
    assert seen == [4, 4, 4, 8, 8, 8] and t.step == 6
    assert [r["lr"] for r in t.history] == pytest.approx([1e-2 * lr_lambda(s, 2, 6) for s in range(6)])


# ------------------------------------------------------------------ accumulation

def test_accumulation_matches_one_large_batch():
    data = cls_data(16)
    torch.manual_seed(0)
    big_model = Tiny()
    small_model = Tiny()
    small_model.load_state_dict(big_model.state_dict())
    # a large eps makes Adam's step depend on the gradient's scale, so a wrong 1/k would show
    common = dict(max_steps=1, eps=1e-3, weight_decay=0.1, max_grad_norm=None)
    big = Trainer(big_model, cfg(**common), DataLoader(data, batch_size=8))
    small = Trainer(small_model, cfg(grad_accum_steps=4, **common), DataLoader(data, batch_size=2))
    big.train()
    small.train()
    assert big.history[0]["train_loss"] == pytest.approx(small.history[0]["train_loss"], abs=1e-6)
    assert big.history[0]["grad_norm"] == pytest.approx(small.history[0]["grad_norm"], abs=1e-6)
    for k, v in weights(big_model).items():
        torch.testing.assert_close(small_model.state_dict()[k], v, atol=1e-6, rtol=0)
    assert small.batch_in_epoch == 4 and big.batch_in_epoch == 1


# ------------------------------------------------------------------ exact resume

def test_resume_is_exact(tmp_path):
    """N steps in one go == k steps, save, load into a new trainer and model, N - k more steps."""
    data = lm_data(10)  # 3 batches of 4/4/2 per epoch: accumulation crosses epoch boundaries
    config = cfg(max_steps=7, grad_accum_steps=2, warmup_steps=2, weight_decay=0.1, max_grad_norm=0.5)

    def make(seed):
        loader = DataLoader(data, batch_size=4, shuffle=True)
        return Trainer(tiny_gpt(seed, dropout=0.2), config, loader)

    full = make(0)
    full.train()
    first = make(0)
    first.train(steps=3)
    first.save_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(123)  # disturb the global RNG: load must restore it
    second = make(99)
    second.load_checkpoint(tmp_path / "ckpt")
    # 6 micro-batches: epoch 0 and all of epoch 1
    assert (second.step, second.epoch, second.batch_in_epoch) == (3, 1, 3)
    second.train()
    assert second.step == full.step == 7
    for k, v in full.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[k], v), k
    assert second.history == full.history


def test_epochs_mode_and_periodic_checkpoints(tmp_path):
    loader = DataLoader(cls_data(12), batch_size=4, shuffle=True)
    t = Trainer(Tiny(), cfg(max_steps=None, epochs=3, grad_accum_steps=2, save_every=2), loader,
                checkpoint_dir=tmp_path / "run")
    assert t.max_steps == 4
    t.train()
    state, _, _ = read_checkpoint(tmp_path / "run")
    assert state["step"] == 4 and state["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary directories left


# ------------------------------------------------------------------ clipping, early stopping, bf16, history

def test_clipping_bounds_the_gradient_norm():
    """Clipped gradients have norm exactly max_grad_norm; the recorded norm is the unclipped one, computed here
    by hand for the first step (initial weights, first batch)."""
    torch.manual_seed(0)
    model = Tiny()
    reference = Tiny()
    reference.load_state_dict(model.state_dict())
    data = cls_data()
    t = Trainer(model, cfg(max_steps=3, max_grad_norm=0.01), DataLoader(data, batch_size=4))
    seen = []

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.nn.utils.get_total_norm(grads)))

    t.optimizer.register_step_pre_hook(before_step)
    t.train()
    reference(data.tensors["x"][:4], data.tensors["labels"][:4]).loss.backward()
    first_norm = float(torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]))
    assert t.history[0]["grad_norm"] == pytest.approx(first_norm, rel=1e-5) and first_norm > 0.1
    assert seen == pytest.approx([0.01] * 3, rel=1e-4)


def test_early_stopping_stops():
    loader = DataLoader(cls_data(), batch_size=4)
    t = Trainer(Tiny(), cfg(max_steps=50, eval_every=1, early_stopping_patience=2, monitor="eval_const",
                            mode="max"),
                loader, eval_loader=loader, metrics_fn=lambda logits, labels: {"const": 1.0})
    t.train()
    assert t.step == 3 and t.should_stop and t.best_step == 1
    assert t.history[-1]["early_stopped"] is True


def test_restore_best_loads_the_weights_of_the_best_evaluation():
    loader = DataLoader(cls_data(), batch_size=4)
    scores = iter([0.1, 0.5, 0.9, 0.3, 0.2, 0.4])  # best at step 3
    snapshots = {}

    def metric(logits, labels):
        snapshots[len(snapshots) + 1] = weights(t.model)
        return {"score": next(scores)}

    t = Trainer(Tiny(), cfg(max_steps=6, eval_every=1, monitor="eval_score", mode="max", restore_best=True),
                loader, eval_loader=loader, metrics_fn=metric)
    t.train()
    assert t.best_step == 3 and t.history[-1]["restored_best_step"] == 3
    for k, v in weights(t.model).items():
        assert torch.equal(v, snapshots[3][k]), k
    assert not all(torch.equal(v, snapshots[6][k]) for k, v in weights(t.model).items())


def test_evaluate_mean_loss_and_metrics():
    data = cls_data(10)
    model = Tiny()
    t = Trainer(model, cfg(), DataLoader(data, batch_size=4), eval_loader=DataLoader(data, batch_size=4),
                metrics_fn=lambda lg, lb: {"accuracy": (lg.argmax(-1) == lb).float().mean()})
    metrics = t.evaluate()
    with torch.no_grad():
        out = model(data.tensors["x"], data.tensors["labels"])
    assert metrics["eval_loss"] == pytest.approx(float(out.loss), abs=1e-5)
    acc = (out.logits.argmax(-1) == data.tensors["labels"]).float().mean()
    assert metrics["eval_accuracy"] == pytest.approx(float(acc))
    assert model.training  # mode restored


def test_bad_inputs():
    loader = DataLoader(cls_data(), batch_size=4)
    with pytest.raises(ValueError, match="eval_loader"):
        Trainer(Tiny(), cfg(eval_every=1), loader)
    with pytest.raises(ValueError, match="restore_best"):
        Trainer(Tiny(), cfg(restore_best=True), loader)
    with pytest.raises(ValueError, match="labels"):
        Trainer(Tiny(), cfg(), DataLoader(Dicts(x=torch.randn(8, 6)), batch_size=4)).train()
    with pytest.raises(ValueError, match="dict"):
        Trainer(Tiny(), cfg(), [(torch.randn(4, 6), torch.zeros(4))]).train()
    with pytest.raises(ValueError, match="no batches"):
        Trainer(Tiny(), cfg(), []).train()


def test_bf16_autocast_runs_on_cpu():
    t = Trainer(tiny_gpt(), cfg(max_steps=3, bf16=True), DataLoader(lm_data(), batch_size=4),
                eval_loader=DataLoader(lm_data(6, seed=3), batch_size=3))
    dtypes = []
    t.model.lm_head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    t.train()
    assert torch.bfloat16 in dtypes
    fp32 = Trainer(tiny_gpt(), cfg(max_steps=3), DataLoader(lm_data(), batch_size=4),
                   eval_loader=DataLoader(lm_data(6, seed=3), batch_size=3))
    fp32.train()
    # the same model and batches: bf16 (8-bit mantissa) moves the losses (about ln 50 ≈ 3.9) by < 1e-3 here
    assert [r["train_loss"] for r in t.history] == pytest.approx([r["train_loss"] for r in fp32.history], abs=0.01)
    assert t.history[-1]["eval_loss"] == pytest.approx(fp32.history[-1]["eval_loss"], abs=0.01)


def test_history_json_round_trip_and_plot(tmp_path):
    loader = DataLoader(cls_data(), batch_size=4)
    t = Trainer(Tiny(), cfg(max_steps=4, eval_every=2), loader, eval_loader=loader)
    history = t.train()
    assert [r["step"] for r in history] == [1, 2, 3, 4] and "eval_loss" in history[1]
    assert load_history(save_history(history, tmp_path / "h.json")) == history
    ax = plot_history(history)
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "优化步数"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="train_loss"):
        plot_history([{"step": 1}])
