"""make pdf: one PDF of the whole book, with Chinese text, typeset formulas and an embedded CJK font."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import browser_check
import nbtools

pytestmark = pytest.mark.browser

pypdf = pytest.importorskip("pypdf")

ROOT = Path(__file__).resolve().parents[1]
MAKE_PDF = ROOT / "book" / "tools" / "make_pdf.py"
CJK = re.compile(r"[\u4e00-\u9fff]")
RAW_LATEX = ("\\frac", "\\begin{", "\\[", "\\(", "$$")  # math delimiters; code may hold "$\\mathrm{..}$"


def _title(page: str) -> str:
    """The first level-1 heading of a toc page (.ipynb or .md)."""
    notebook, markdown = ROOT / f"{page}.ipynb", ROOT / f"{page}.md"
    if notebook.is_file():
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = markdown.read_text(encoding="utf-8")
    match = re.search(r"^# (.+)$", text, re.MULTILINE)
    assert match, f"{page} has no '# ' title"
    return match[1]


def _flat(text: str) -> str:
    """NFKC without whitespace: Chromium maps some CJK glyphs to Kangxi radicals (⼤ for 大)."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def _title_pattern(title: str) -> re.Pattern:
    """Match title in the flat PDF text; a CJK character may come out as a radical (⻅ for 见).

    Chromium's ToUnicode map names one code point per glyph, and the CJK fonts share a
    glyph between an ideograph and its radical, so a few characters (见, 长, …) are
    extracted from the CJK Radicals Supplement block, which NFKC does not fold.
    """
    parts = [f"(?:{re.escape(ch)}|[\u2e80-\u2eff])" if CJK.match(ch) else re.escape(ch)
             for ch in _flat(title)]
    return re.compile("".join(parts))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, float]:
    """Run make_pdf.py once into a temporary folder; return the process, the PDF and the seconds."""
    if missing := browser_check.missing_browser_deps():
        pytest.skip(f"missing {' and '.join(missing)}: run `make browser-deps` (Debian: apt-get install chromium "
                    "fonts-noto-cjk)")
    out = tmp_path_factory.mktemp("pdf")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(MAKE_PDF), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc, out / "大模型应用开发.pdf", time.perf_counter() - start


@pytest.fixture(scope="module")
def reader(built) -> "pypdf.PdfReader":
    proc, pdf, _ = built
    assert proc.returncode == 0, f"make_pdf.py failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return pypdf.PdfReader(pdf)


def _extract(pdf: Path, start: int, stop: int) -> list[str]:
    """Text of pages start..stop-1 (run in a worker process: extraction is CPU-bound)."""
    pages = pypdf.PdfReader(pdf).pages
    return [pages[i].extract_text() for i in range(start, stop)]


@pytest.fixture(scope="module")
def page_texts(built, reader) -> list[str]:
    pdf, count = built[1], len(reader.pages)
    bounds = [count * k // 2 for k in range(3)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = pool.map(_extract, [pdf] * 2, bounds[:-1], bounds[1:])
        return [page for part in parts for page in part]


@pytest.fixture(scope="module")
def text(page_texts) -> str:
    return "\n".join(page_texts)


CONTENTS_LINE = re.compile(r"^(.*\S)\s+(\d+)\s*$")


def _contents(page_texts: list[str]) -> tuple[list[int], list[tuple[str, int]]]:
    """The contents pages (0-based, they follow the title page) and their (title, page) lines."""
    pages, lines = [], []
    for index in range(1, len(page_texts)):
        text = page_texts[index]
        if index > 1 and not re.match(r"\s*\S.*\s\d+\s*$", text.split("\n", 1)[0]):
            break  # the preface: its first line is not a contents line
        pages.append(index)
        pending = ""  # a title that wraps: its first lines have no number
        for line in text.splitlines()[:-1]:  # the last line is the footer (n / total)
            if match := CONTENTS_LINE.match(line):
                lines.append((pending + match[1], int(match[2])))
                pending = ""
            else:
                pending += line
    return pages, lines


def _in_flat(title: str, text: str) -> bool:
    return bool(_title_pattern(title).search(_flat(text)))


def test_make_pdf_builds_one_pdf_and_names_it(built):
    proc, pdf, seconds = built
    assert proc.returncode == 0, f"make_pdf.py failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("Open ") and last.endswith(".pdf"), last
    assert Path(last.removeprefix("Open ")).resolve() == pdf.resolve()
    assert pdf.read_bytes()[:5] == b"%PDF-"
    print(f"make_pdf.py: {seconds:.0f} s, {pdf.stat().st_size / 1e6:.1f} MB")


def test_page_count_is_plausible(reader):
    pages, docs = len(reader.pages), len(nbtools.toc_files())
    assert 5 * docs <= pages <= 100 * docs, f"{pages} pages for {docs} toc pages"
    assert all(abs(float(p.mediabox.width) - 595) < 3 and abs(float(p.mediabox.height) - 842) < 3
               for p in reader.pages), "pages are not A4 (595 x 842 pt)"


def test_every_toc_title_is_in_the_text_in_toc_order(page_texts):
    _, lines = _contents(page_texts)
    flat = _flat("\n".join(page_texts[lines[0][1] - 1:]))  # the body, from the preface on
    position = -1
    for page in nbtools.toc_files():
        match = _title_pattern(_title(page)).search(flat, position + 1)
        assert match, f"title of {page} ({_title(page)!r}) is not in the PDF text after the previous one"
        position = match.start()


def test_the_pdf_opens_with_a_title_page(page_texts):
    first = page_texts[0]
    assert _in_flat("大模型应用开发", first), first
    flat = _flat(first)
    assert "2026年版" in flat, first
    assert re.search(r"\d{4}年\d{1,2}[月⽉]\d{1,2}[日⽇]", flat), f"no build date on the title page: {first}"
    assert len(first.splitlines()) <= 8, f"the title page holds more than a title: {first[:500]}"


def test_a_contents_with_page_numbers_comes_before_the_preface(page_texts, reader):
    pages, lines = _contents(page_texts)
    assert pages and pages[0] == 1, "the contents must follow the title page"
    assert _in_flat("目录", page_texts[1].split("\n", 1)[0]), page_texts[1][:200]
    numbers = [n for _, n in lines]
    # every chapter and appendix is listed, in reading order, with the page its title is printed on
    titles = [_title(page) for page in nbtools.toc_files()]
    assert len(lines) >= len(titles), f"{len(lines)} contents lines for {len(titles)} toc pages"
    assert numbers == sorted(numbers), f"contents page numbers are not in order: {numbers}"
    assert numbers[0] == pages[-1] + 2, "the preface must start on the page after the contents"
    assert numbers[-1] <= len(reader.pages)
    listed = iter(lines)
    for title in titles:
        entry = next((e for e in listed if _in_flat(_flat(title), e[0])), None)
        assert entry, f"{title!r} is not in the contents (in order)"
        page = page_texts[entry[1] - 1]
        assert _in_flat(title[:12], page), f"{title!r}: the contents says page {entry[1]}, it is not there"


def test_links_stay_inside_the_pdf(reader):
    """Cross-references point into the PDF, never at the local server the page was printed from."""
    local = []
    for number, page in enumerate(reader.pages, 1):
        for annotation in page.get("/Annots") or []:
            action = annotation.get_object().get("/A") or {}
            uri = str(action.get("/URI", ""))
            if "127.0.0.1" in uri or "localhost" in uri:
                local.append((number, uri))
    assert not local, f"{len(local)} links to the local server, e.g. {local[:3]}"


def test_no_test_markers_in_the_code(text):
    """`# NBVAL_CHECK_OUTPUT` is for the tests (book/tools/nbval_markers.py): at most the appendices'
    prose names it."""
    prose = sum(p.read_text(encoding="utf-8").count("NBVAL_") for p in (ROOT / "book").glob("*.md"))
    assert _flat(text).count("NBVAL_") <= prose


def test_text_is_chinese(text):
    cjk = len(CJK.findall(unicodedata.normalize("NFKC", text)))
    assert cjk >= 20_000, f"only {cjk} CJK characters in the text layer"
    assert "注意力" in _flat(text)


def test_formulas_are_typeset_and_diagrams_drawn(text):
    flat = unicodedata.normalize("NFKC", text)
    left = {raw: flat.count(raw) for raw in RAW_LATEX if raw in flat}
    assert not left, f"raw LaTeX in the PDF text (formulas not typeset): {left}"
    assert "-->" not in flat, "Mermaid source in the PDF text (diagram not drawn)"


def _fonts(resources, seen: dict) -> None:
    """Collect font dictionaries of a page, including those of its form XObjects."""
    if resources is None:
        return
    resources = resources.get_object()
    for font in (resources.get("/Font") or {}).values():
        font = font.get_object()
        descriptor = font.get("/FontDescriptor")
        if descriptor is None and font.get("/DescendantFonts"):
            descriptor = font["/DescendantFonts"][0].get_object().get("/FontDescriptor")
        descriptor = descriptor.get_object() if descriptor is not None else {}
        name = str(descriptor.get("/FontName") or font.get("/BaseFont"))
        embedded = any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3")) \
            or "/CharProcs" in font  # Type3: the glyph outlines are in the PDF itself
        seen[name] = seen.get(name, False) or embedded
    for xobject in (resources.get("/XObject") or {}).values():
        xobject = xobject.get_object()
        if xobject.get("/Subtype") == "/Form":
            _fonts(xobject.get("/Resources"), seen)


def test_a_cjk_font_is_embedded(reader):
    seen: dict[str, bool] = {}
    for page in reader.pages[:20]:
        _fonts(page.get("/Resources"), seen)
    cjk = [name for name, embedded in seen.items()
           if embedded and re.search(r"CJK|Han|Hei|Song|Kai|Ming|YaHei|WenQuanYi", name, re.I)]
    assert cjk, f"no embedded CJK font among {sorted(seen)}"


def test_every_figure_is_numbered_and_captioned(text):
    """Each notebook figure prints as 图 N.M followed by its caption (book/tools/numbering.py)."""
    import nbformat
    import test_figures

    flat = _flat(text)
    numbers = set(re.findall(r"图(\d+\.\d+)", flat))
    captions = [e["caption"] for p in test_figures.NOTEBOOKS
                for _, e in test_figures.figures(nbformat.read(p, as_version=4))]
    assert len(numbers) >= len(captions) >= 60, f"{len(numbers)} figure numbers for {len(captions)} captions"
    def pattern(caption: str) -> str:  # a CJK character may come out as a radical look-alike (see _flat)
        return "".join(f"(?:{re.escape(ch)}|[\u2e80-\u2fdf])" if "\u4e00" <= ch <= "\u9fff" else re.escape(ch)
                       for ch in _flat(caption)[:12])

    missing = [c for c in captions if not re.search(pattern(c), flat)]
    assert not missing, f"captions not in the PDF text: {missing[:5]}"
