"""The HTML book builds from the stored notebook outputs with zero warnings and loads nothing remote."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import browser_check  # build_once: one build shared with test_browser.py
import nbtools

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_1 = ["chapters/ch01_concepts", "chapters/ch01_attention"]
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)
LINK_HREF = re.compile(r"<link\b[^>]*\bhref=[\"']([^\"']+)[\"']", re.IGNORECASE)
REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """Build the book once per session (shared with test_browser.py); return the process and the HTML folder."""
    return browser_check.build_once(tmp_path_factory.getbasetemp() / "book")


def _pages(html: Path) -> list[Path]:
    return [p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts]


def test_build_succeeds_without_warnings(book):
    proc, html = book
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"book build failed (warnings are errors):\n{log}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("Open ") and last.endswith("index.html"), last
    assert (ROOT / last.removeprefix("Open ")).resolve() == (html / "index.html").resolve()


def test_every_toc_page_is_built(book):
    _, html = book
    files = nbtools.toc_files()
    assert set(CHAPTER_1) <= set(files), "chapter 1 is missing from book/_toc.yml"
    root = (html / "index.html").read_text(encoding="utf-8")
    assert 'url=book/intro.html"' in root, "the site root must lead to the preface"
    icon = re.search(r'<link rel="icon" href="([^"]+)"', root)  # else browsers ask for /favicon.ico
    assert icon and (html / icon.group(1)).is_file(), root
    for name in files:
        assert (html / f"{name}.html").is_file(), f"missing {name}.html"


def test_no_remote_scripts_or_styles(book):
    _, html = book
    pages = _pages(html)
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        remote = [u for u in SCRIPT_SRC.findall(text) + LINK_HREF.findall(text) if REMOTE.match(u)]
        assert not remote, f"{page.relative_to(html)} loads remote files: {remote}"
        for host in ("cdn.jsdelivr.net", "unpkg.com", "googleapis.com", "cdnjs"):
            assert host not in text, f"{page.relative_to(html)} mentions {host}"


def test_vendored_mathjax_and_mermaid(book):
    _, html = book
    vendor = html / "_static" / "vendor"
    assert (vendor / "mathjax" / "tex-chtml-full.js").is_file()
    assert any((vendor / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert (vendor / "mermaid" / "mermaid.min.js").is_file()
    for page in _pages(html):
        text = page.read_text(encoding="utf-8")
        srcs = SCRIPT_SRC.findall(text)
        if 'class="math' in text:
            assert any("_static/vendor/mathjax/tex-chtml-full.js" in s for s in srcs), page
        if 'class="mermaid' in text:
            # a classic script: browsers refuse ES-module imports on file:// pages
            assert any("_static/vendor/mermaid/mermaid.min.js" in s for s in srcs), page
            assert "import mermaid from" not in text, page


def test_figures_and_equations_are_numbered_by_chapter(book):
    """Every captioned notebook figure and labelled equation is numbered (chapter, n), n counting on
    through the chapter's pages in reading order, and the references print the same numbers."""
    import nbformat
    import test_figures

    _, html = book
    expected: dict[str, list[str]] = {}
    for doc in nbtools.toc_files():
        if not doc.startswith("chapters/"):
            continue
        nb = nbformat.read(ROOT / f"{doc}.ipynb", as_version=4)
        chapter = test_figures._chapter(Path(doc))
        expected.setdefault(chapter, [])
        page = (html / f"{doc}.html").read_text(encoding="utf-8")
        figs = re.findall(r'<figure class="notebook-figure[^"]*" id="([^"]+)">.*?caption-number">图 ([\d.]+) <',
                          page, re.S)
        eqs = re.findall(r'id="equation-(eq-[^"]+)">\s*<span class="eqno">\(([\d.]+)\)', page)
        names = [e["name"] for _, e in test_figures.figures(nb)]
        labels = [label for _, label in test_figures.equations(nb) if label]
        assert [f[0] for f in figs] == names, f"{doc}: rendered figures {figs} vs metadata {names}"
        assert sorted(e[0] for e in eqs) == sorted(labels), f"{doc}: rendered equations {eqs} vs labels {labels}"
        expected[chapter] += [("fig", n) for _, n in figs] + [("eq", n) for _, n in eqs]
        anchors = figs + [(f"equation-{label}", number) for label, number in eqs]
        for ident, number in anchors:  # a reference prints the number its target shows
            for ref in re.findall(rf'<a class="reference internal" href="[^"]*#{re.escape(ident)}"[^>]*>'
                                  r'(?:<span class="std std-numref">)?([^<]*)<', page):
                assert ref.strip() in (f"图 {number}", f"({number})"), (
                    f"{doc}: reference to {ident} reads {ref!r}, the target is {number}")
    for chapter, numbers in expected.items():
        for kind in ("fig", "eq"):
            got = [n for k, n in numbers if k == kind]
            want = [f"{int(chapter)}.{k}" for k in range(1, len(got) + 1)]
            assert sorted(got, key=lambda n: int(n.split(".")[1])) == want, f"chapter {chapter} {kind}: {got}"


def test_theme_wording_is_simplified_chinese(book):
    """The theme's zh_CN catalogue says 列印 (Traditional usage); build_book replaces it."""
    _, html = book
    page = (html / "chapters" / "ch01_attention.html").read_text(encoding="utf-8")
    assert 'title="打印为 PDF"' in page
    assert not [p for p in _pages(html) if "列印" in p.read_text(encoding="utf-8")]


def _check_only(source: str) -> bool:
    """True for code that is nothing but `assert` statements (and comments): a check for the tests."""
    import ast

    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics: not a plain check
        return False
    return bool(body) and all(isinstance(statement, ast.Assert) for statement in body)


def test_check_only_cells_are_removed_from_the_book():
    """A code cell of asserts alone exists for the tests: tagged remove-cell, it prints no wall of checks."""
    import nbformat

    unhidden = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and _check_only(cell.source) \
                    and "remove-cell" not in cell.metadata.get("tags", []):
                unhidden.append(f"{path.name} cell {index}")
    assert not unhidden, f"code cells of asserts only without the remove-cell tag: {unhidden}"


def test_no_test_markers_in_chapter_pages(book):
    """`# NBVAL_CHECK_OUTPUT` and other nbval markers are for the tests: book/tools/nbval_markers.py drops
    them from the code shown (the appendices may name the marker in their prose)."""
    _, html = book
    pages = sorted((html / "chapters").glob("*.html"))
    assert pages
    marked = [p.name for p in pages if "NBVAL_" in p.read_text(encoding="utf-8")]
    assert not marked, f"nbval markers shown in {marked}"
