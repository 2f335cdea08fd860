"""Every figure and display equation of the book is numbered, labelled, captioned in Chinese and referenced.

Figures come from notebook image outputs, captioned by the cell's `figures` metadata
(book/tools/numbering.py turns them into numbered figures); equations are `$$ … $$ (label)` blocks in
Markdown cells. These checks read the notebooks; tests/test_book.py builds the book, where an
unknown label is a warning and so an error, and checks the rendered numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import nbtools
import numbering

pytestmark = pytest.mark.book

NOTEBOOKS = nbtools.chapter_notebooks()
CJK = re.compile(r"[\u4e00-\u9fff]")
DISPLAY_MATH = re.compile(r"^\$\$(.*?)\$\$[ \t]*(\((?P<label>[^)\s]+)\))?[ \t]*$", re.S | re.M)


def _chapter(path: Path) -> str:
    return numbering.CHAPTER.search(path.name).group(1)


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _images(cell) -> int:
    return sum(1 for o in cell.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {})))


def figures(nb) -> list[tuple[int, dict]]:
    return [(i, entry) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for entry in c.metadata.get(numbering.META_KEY, [])]


def equations(nb) -> list[tuple[str, str | None]]:
    """(body, label) of every display equation in the Markdown cells."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"```.*?```", "", cell.source, flags=re.S)  # math shown as code is not an equation
        found += [(m.group(1), m.group("label")) for m in DISPLAY_MATH.finditer(text)]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_image_output_is_a_captioned_figure(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        entries = cell.metadata.get(numbering.META_KEY, [])
        assert len(entries) == _images(cell), (
            f"{path.name} cell {i}: {_images(cell)} image outputs but {len(entries)} `figures` entries")
    for i, entry in figures(nb):
        name, caption = entry.get("name", ""), entry.get("caption", "")
        assert re.fullmatch(rf"fig-ch{_chapter(path)}-[a-z0-9]+(-[a-z0-9]+)*", name), (
            f"{path.name} cell {i}: figure name {name!r} should read fig-ch{_chapter(path)}-<slug>")
        assert len(CJK.findall(caption)) >= 4, f"{path.name} cell {i}: caption {caption!r} is not a Chinese sentence"
        assert not re.search(r"[{}$`]", caption), f"{path.name} cell {i}: captions are plain text: {caption!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_and_equation_is_referenced_from_the_text(path):
    nb = nbformat.read(path, as_version=4)
    prose = _markdown(nb)
    for _, entry in figures(nb):
        assert f"{{numref}}`{entry['name']}`" in prose, f"{path.name}: figure {entry['name']} is never referenced"
    for body, label in equations(nb):
        assert label, f"{path.name}: display equation without a label: $${body.strip()[:60]}$$"
        assert re.fullmatch(rf"eq-ch{_chapter(path)}-[a-z0-9]+(-[a-z0-9]+)*", label), (
            f"{path.name}: equation label {label!r} should read eq-ch{_chapter(path)}-<slug>")
        assert f"{{eq}}`{label}`" in prose, f"{path.name}: equation {label} is never referenced"


def test_labels_are_unique_across_the_book():
    names = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        names += [e["name"] for _, e in figures(nb)] + [label for _, label in equations(nb) if label]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"labels used twice: {dupes}"
    assert len(names) >= 60



@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_use_the_house_style(path):
    """One look for every figure: plotting.use_house_style() (CJK font, sizes, palette) runs before the first plot."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first_plot = next((i for i, c in enumerate(code) if _images(c)), None)
    if first_plot is None:
        return
    assert any("use_house_style()" in c.source for c in code[: first_plot + 1]), (
        f"{path.name}: plots before calling bigmodel_course.plotting.use_house_style()")


MERMAID = re.compile(r"^[ \t]*```\{?mermaid\}?[ \t]*\n(?P<body>.*?)^[ \t]*```[ \t]*$", re.S | re.M)
NODE = re.compile(r"\b[A-Za-z]\w*\[\"?(?P<label>[^\]\"]+)\"?\]")
LINK = re.compile(r"\{(?:ref|doc)\}`[^`]+`")


def diagrams() -> list[tuple[str, str, str]]:
    """(notebook, diagram body, the Markdown after it: rest of its cell and next Markdown cell), in reading order."""
    found = []
    for doc in nbtools.toc_files():
        if not doc.startswith("chapters/"):
            continue
        cells = [c.source for c in nbformat.read(nbtools.ROOT / f"{doc}.ipynb", as_version=4).cells
                 if c.cell_type == "markdown"]
        for i, text in enumerate(cells):
            for m in MERMAID.finditer(text):
                after = text[m.end():] + "\n" + (cells[i + 1] if i + 1 < len(cells) else "")
                found.append((doc, m.group("body").strip(), after))
    return found


def test_every_overview_diagram_points_to_what_runs():
    """Each box of a Mermaid overview has a list item right after the diagram, `- **box**：…`, linking the
    section or notebook where it runs (or saying 只作文字讨论); a repeated diagram links back instead."""
    seen: dict[str, str] = {}
    found = diagrams()
    assert len(found) >= 10
    for doc, body, after in found:
        if body in seen:
            assert LINK.search(after), f"{doc}: the repeated diagram from {seen[body]} links nowhere"
            continue
        seen[body] = doc
        labels = [m.group("label").split("<br>")[0].strip() for m in NODE.finditer(body)]
        assert labels, f"{doc}: no boxes found in a diagram"
        items = re.findall(r"^\s*(?:[-*]|\d+\.)\s+\*\*(.+?)\*\*(.*)$", after, re.M)
        for label in labels:
            lines = [rest for name, rest in items if name.strip() == label]
            assert lines, f"{doc}: diagram box {label!r} has no list item `- **{label}**：…` after the diagram"
            assert LINK.search(lines[0]) or "只作文字讨论" in lines[0], (
                f"{doc}: the item for {label!r} links no section ({{ref}}/{{doc}}) and does not say 只作文字讨论")
