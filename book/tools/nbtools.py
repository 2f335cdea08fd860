"""Notebook tooling shared by `make notebooks` and the tests: execution, code hash, clean metadata."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import nbformat

from bigmodel_course.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = ROOT / "chapters"
META_KEY = "bigmodel_course"


def chapter_notebooks() -> list[Path]:
    """Every chapter notebook, sorted by name."""
    return sorted(CHAPTERS.glob("*.ipynb"))


def toc_files(toc: Path = ROOT / "book" / "_toc.yml") -> list[str]:
    """Every page of the table of contents (root, parts, chapters, sections) in reading order, without suffix."""
    import yaml

    data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    files = [str(data["root"])]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(str(entry["file"]))
            walk(entry.get("sections", []))
            walk(entry.get("chapters", []))

    for part in data.get("parts", []) or []:
        walk(part.get("chapters", []))
    walk(data.get("chapters", []))
    return files


def title(nb: nbformat.NotebookNode) -> str:
    """The notebook's first level-1 heading ('' when it has none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (m := re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)):
            return m.group(1).strip()
    return ""


def code_hash(nb: nbformat.NotebookNode) -> str:
    """sha256 of the notebook's code cell sources, in order (outputs and metadata excluded)."""
    sources = [c.source for c in nb.cells
               if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode("utf-8")).hexdigest()


def clean_metadata(nb: nbformat.NotebookNode) -> None:
    """Drop run-specific metadata (papermill timings, execution timestamps) so diffs show only results."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)


def coalesce_streams(nb: nbformat.NotebookNode) -> None:
    """Merge consecutive stream outputs and keep only what a terminal shows after carriage returns
    (a progress bar's final state instead of its hundreds of updates)."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    CoalesceStreamsPreprocessor().preprocess(nb, {})


def write_atomic(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write a notebook atomically (bigmodel_course.files: temporary file, fsync, rename)."""
    text = nbformat.writes(nb)
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def execute(path: Path, profile: str, output: Path, timeout: int = 3600) -> nbformat.NotebookNode:
    """Run a notebook top to bottom with papermill in its own folder under `profile`; return the result."""
    import papermill as pm

    env_before = os.environ.get("BIGMODEL_PROFILE")
    os.environ["BIGMODEL_PROFILE"] = profile
    try:
        pm.execute_notebook(
            str(path), str(output), kernel_name="python3", cwd=str(path.parent),
            parameters={"PROFILE": profile} if profile != "full" else None,
            progress_bar=False, execution_timeout=timeout,
        )
    finally:
        if env_before is None:
            os.environ.pop("BIGMODEL_PROFILE", None)
        else:
            os.environ["BIGMODEL_PROFILE"] = env_before
    return nbformat.read(str(output), as_version=4)
