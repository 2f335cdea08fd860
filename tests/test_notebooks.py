"""Every chapter notebook runs in the ci profile and matches its stored outputs (nbval), and is fresh.

The papermill run (parameter injection, `-p PROFILE ci`) is done once, on the student copy of each
notebook (tests/test_student.py): the same code cells without the exercise solutions, which nbval runs here."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import nbtools

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOKS = nbtools.chapter_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def test_there_are_chapter_notebooks():
    assert NOTEBOOKS, "no notebooks found under chapters/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_are_fresh_and_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    meta = nb.metadata.get(nbtools.META_KEY, {})
    assert meta.get("code_sha256") == nbtools.code_hash(nb), (
        f"{path.name}: code changed after its outputs were made; run `make notebook NB=chapters/{path.name}`"
    )
    assert meta.get("profile") == "full", f"{path.name}: stored outputs must come from the full profile"
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not a clean top-to-bottom run: {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored error output {errors[0].get('ename')}"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell is not tagged 'parameters'"
    assert 'os.environ.get("BIGMODEL_PROFILE", "full")' in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_nbval_lax_matches_stored_outputs(path):
    env = {**os.environ, "BIGMODEL_PROFILE": "ci"}
    cmd = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
           "--nbval-sanitize-with", str(ROOT / "tests" / "sanitize.cfg"), str(path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
