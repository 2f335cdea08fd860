import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bigmodel_course import distributed
from bigmodel_course.cli import _without_launch_options, main


def test_torchrun_command_single_and_multi_node():
    one = distributed.torchrun_command(["train", "--steps", "2"], nproc=2)
    assert one[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert "--standalone" in one and one[-4:] == ["bigmodel_course.cli", "train", "--steps", "2"]
    multi = distributed.torchrun_command(["train"], nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1",
                                         master_port=1234)
    assert "--standalone" not in multi
    for part in ("--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234"):
        assert part in multi


@pytest.mark.parametrize("kw", [dict(nproc=0), dict(nproc=2, nnodes=0), dict(nproc=2, nnodes=2, node_rank=2)])
def test_torchrun_command_rejects_bad_sizes(kw):
    with pytest.raises(ValueError):
        distributed.torchrun_command([], **kw)


def test_launch_options_are_not_passed_to_the_workers():
    argv = ["train", "--nproc", "2", "--steps", "3", "--nnodes=1", "--master-port", "99", "--out", "x"]
    assert _without_launch_options(argv) == ["train", "--steps", "3", "--out", "x"]


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not distributed.under_torchrun()
    env = distributed.init_distributed()
    assert (env.rank, env.world_size, env.backend, env.is_main) == (0, 1, None, True)
    assert distributed.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_train_task_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        distributed.train_task("translate", "ci", 1, tmp_path)
    with pytest.raises(ValueError, match="not divisible"):
        distributed.train_task("lm", "ci", 1, tmp_path, global_batch=5, grad_accum=2)
    with pytest.raises(ValueError, match="steps"):
        distributed.train_task("lm", "ci", 0, tmp_path)


ARGS = ["train", "--task", "sentiment", "--profile", "ci", "--steps", "6", "--batch", "16", "--grad-accum", "2",
        "--lr", "3e-3", "--threads", "1", "--no-progress"]


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one_process(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:  # one process, in this one
        assert main([*ARGS, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "trained gpt on sentiment" in capsys.readouterr().out
    # two processes under torchrun, through the same command
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "bigmodel_course.cli", *ARGS, "--out", str(tmp_path / "two"), "--nproc", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (one, meta1), (two, meta2) = [(load_file(str(tmp_path / d / "model.safetensors")),
                                   json.loads((tmp_path / d / "meta.json").read_text())) for d in ("one", "two")]
    assert (meta1["world_size"], meta2["world_size"]) == (1, 2)
    assert (meta1["per_process_batch"], meta2["per_process_batch"]) == (8, 4)  # 16 = processes x 2 x this
    assert meta2["backend"] == "gloo"
    assert meta1["losses"] == pytest.approx(meta2["losses"], abs=1e-4)  # the loss of the same global batches
    # averaged (not summed) gradients: the same gradient norm at every step
    assert meta1["grad_norms"] == pytest.approx(meta2["grad_norms"], rel=1e-4)
    diff = max(float((one[n] - two[n]).abs().max()) for n in one)
    assert diff < 1e-4, f"weights differ by up to {diff}"
    assert "score.weight" in one


def test_train_command_with_accumulation_and_checkpointing(tmp_path):
    assert main(["train", "--task", "lm", "--steps", "1", "--batch", "4", "--grad-accum", "2", "--checkpointing",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["steps"] == 1 and meta["gradient_checkpointing"]
    assert meta["per_process_batch"] == 2 and meta["grad_accum"] == 2
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert len(names & {"lm_head.weight", "transformer.embeddings.word.weight"}) == 1  # tied: stored once


def test_trainer_world_info_without_a_process_group():
    from bigmodel_course.training import world_info

    assert world_info() == (1, 0)
    distributed.shutdown()  # nothing to leave: no error
