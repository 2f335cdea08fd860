"""The one I/O layer: hashing, atomic files and folders, manifests, the inter-process lock."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bigmodel_course.files import (
    MANIFEST_FILE,
    IntegrityError,
    LockTimeout,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    check_entry,
    file_entry,
    file_lock,
    previous_path,
    publish_directory,
    published,
    sha256_file,
    staging_directory,
    verify_manifest,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[1]


def test_sha256_and_entry_match_hashlib(tmp_path):
    data = os.urandom(3 << 20)  # more than one 1 MiB chunk
    (tmp_path / "blob").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "blob") == digest
    assert file_entry(tmp_path / "blob") == {"bytes": len(data), "sha256": digest}


def test_check_entry_names_the_problem(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"abcdef")
    entry = file_entry(blob)
    check_entry(blob, entry)
    blob.write_bytes(b"abcdeX")
    with pytest.raises(IntegrityError, match=f"{blob} has sha256 .*changed after it was recorded"):
        check_entry(blob, entry)
    blob.write_bytes(b"abc")
    with pytest.raises(IntegrityError, match="has 3 bytes, expected 6"):
        check_entry(blob, entry)
    blob.unlink()
    with pytest.raises(IntegrityError, match="blob is missing"):
        check_entry(blob, entry)


def test_atomic_write_leaves_old_or_new_and_no_temporary_file(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"名字": [1, 2]})
    assert "名字" in (tmp_path / "x.json").read_text(encoding="utf-8")  # readable, not \\u escapes
    atomic_write_json(tmp_path / "x.json", {"version": "v2"})
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == {"version": "v2"}
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"bad": object()})
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == {"version": "v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644  # an ordinary readable file, not mkstemp's 0600
    atomic_write_text(tmp_path / "sub" / "t.txt", "好")
    assert (tmp_path / "sub" / "t.txt").read_text(encoding="utf-8") == "好"


def test_atomic_directory_replaces_whole_or_keeps_the_old(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("v2-half")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_published_falls_back_to_the_previous_folder_after_an_interrupted_swap(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    os.rename(target, previous_path(target))  # a crash after the first rename of a publish
    assert published(target) == previous_path(target)
    with staging_directory(tmp_path, "ckpt") as tmp:
        (tmp / "a.txt").write_text("new")
        publish_directory(tmp, target)
    assert published(target) == target and (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_manifest_detects_changed_missing_and_added_files(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "model.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "hf" / "config.json").write_text("{}")
    files = write_manifest(tmp_path)
    assert set(files) == {"model.bin", "hf/config.json"}
    assert verify_manifest(tmp_path) == files
    (tmp_path / "extra.txt").write_text("x")
    with pytest.raises(IntegrityError, match="does not list: extra.txt"):
        verify_manifest(tmp_path)
    (tmp_path / "extra.txt").unlink()
    (tmp_path / "hf" / "config.json").write_text("[]")
    with pytest.raises(IntegrityError, match="config.json has sha256"):
        verify_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).unlink()
    with pytest.raises(IntegrityError, match="manifest.json is missing"):
        verify_manifest(tmp_path)


HOLDER = """
import sys, time
from bigmodel_course.files import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_excludes_a_live_holder_however_old_and_dies_with_it(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        old = time.time() - 10_000  # an old lock file is no reason to break the lock of a live process
        os.utime(lock, (old, old))
        with pytest.raises(LockTimeout, match="held by another process"):
            with file_lock(lock, timeout=0.2):
                pass  # pragma: no cover
    finally:
        holder.kill()
        holder.wait()
    with file_lock(lock, timeout=5):  # the OS released the killed holder's lock
        pass


PUBLISHER = """
import sys, time
from pathlib import Path
from bigmodel_course.serving.architectures import build_model
from bigmodel_course.serving.registry import ModelRegistry
from bigmodel_course.vision_models import ViTConfig

root, go, tag, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
reg = ModelRegistry(root)
cfg = ViTConfig(d_model=16, n_heads=2, n_layers=1, dropout=0.0).to_dict()
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    card = reg.publish("digits", build_model("vit", cfg), task="image", architecture="vit", config=cfg,
                       labels=[str(d) for d in range(10)], metrics={"accuracy": 0.5}, description=f"{tag}-{i}",
                       preprocessing={"image_size": 8, "max_value": 16.0, "mean": 4.9, "std": 6.0})
    print(card.version, card.description, flush=True)
"""


@pytest.mark.slow
def test_two_processes_publishing_at_once_lose_nothing(tmp_path):
    """Two processes publish 6 versions each into one model: 12 distinct, complete, verified versions."""
    from bigmodel_course.serving.registry import ModelRegistry

    root, go, n = tmp_path / "registry", tmp_path / "go", 6
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(PUBLISHER), str(root), str(go), tag, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for tag in ("a", "b")]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    claimed = [line.split() for out, _ in outputs for line in out.splitlines()]
    assert len(claimed) == 2 * n
    reg = ModelRegistry(root)
    cards = reg.versions("digits")
    assert [c.version for c in cards] == [f"v{i}" for i in range(1, 2 * n + 1)]
    assert {(c.version, c.description) for c in cards} == {tuple(v) for v in claimed}  # each got its own number
    for card in cards:
        reg.verify("digits", card.version)
    assert sorted(p.name for p in (root / "digits").iterdir() if p.name.startswith(".")) == [".lock"]
