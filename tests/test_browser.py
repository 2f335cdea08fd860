"""The built HTML book, opened page by page in headless Chromium as a reader would see it.

The book is built once (shared with tests/test_book.py), served from 127.0.0.1 and every page is
opened in the system Chromium (book/tools/browser_check.py drives it over the DevTools protocol).
Screenshots of a few pages are written to build/screenshots/ (git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import browser_check
import nbtools

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]

SCREENSHOTS = ROOT / "build" / "screenshots"
SEARCHES = ("注意力", "Transformer")
SHOTS = {
    "landing": ("index.html", None),
    "formula": ("chapters/ch01_attention.html", "div.math"),
    "mermaid": ("chapters/ch01_concepts.html", ".mermaid"),
    "search": (browser_check.search_path("注意力"), "#search-results"),
}


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system Chromium; skips (naming what to install) where it or a CJK font is missing."""
    if missing := browser_check.missing_browser_deps():
        pytest.skip(f"missing {' and '.join(missing)}: run `make browser-deps` (Debian: apt-get install chromium "
                    "fonts-noto-cjk)")
    return browser_check.require_chromium()


@pytest.fixture(scope="module")
def site(tmp_path_factory, chromium) -> tuple[Path, dict[str, browser_check.PageReport]]:
    """Build the book (once per session), open every page; return the HTML folder and the reports."""
    proc, html = browser_check.build_once(tmp_path_factory.getbasetemp() / "book")
    assert proc.returncode == 0, f"book build failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    for stem in SHOTS:
        (SCREENSHOTS / f"{stem}.png").unlink(missing_ok=True)
    reports = browser_check.check_site(html, SCREENSHOTS, SEARCHES, SHOTS, chromium)
    print(f"\nscreenshots: {SCREENSHOTS}")
    return html, reports


def _problems(reports: dict, what) -> list[str]:
    return [f"{path}: {item}" for path, r in reports.items() for item in what(r)]


def test_every_page_loads_with_every_resource_from_the_local_server(site):
    html, reports = site
    assert len(reports) == len(browser_check.site_pages(html)) + len(SEARCHES)
    assert {"index.html", "book/intro.html", "search.html"} <= set(reports)
    bad_status = {path: r.status for path, r in reports.items() if r.status != 200}
    assert not bad_status, f"pages not served with HTTP 200: {bad_status}"
    failed = _problems(reports, lambda r: r.failed_requests)
    assert not failed, "requests that failed:\n" + "\n".join(failed)
    remote = _problems(reports, lambda r: r.remote_requests)
    assert not remote, "requests that left the local server:\n" + "\n".join(remote)
    assert reports["index.html"].final_url.endswith("/book/intro.html"), "index.html must lead to the preface"


def test_no_javascript_console_errors(site):
    _, reports = site
    errors = _problems(reports, lambda r: r.console_errors)
    assert not errors, "JavaScript console errors:\n" + "\n".join(errors)


def test_every_formula_is_typeset(site):
    _, reports = site
    with_math = {path: r.dom for path, r in reports.items() if r.dom["mathElements"]}
    assert len(with_math) >= 10, f"expected formulas on most chapters, found them on {sorted(with_math)}"
    for path, dom in with_math.items():
        assert not dom["untypesetMath"], f"{path}: formulas MathJax did not typeset: {dom['untypesetMath'][:5]}"
        assert dom["mjxContainers"] >= dom["mathElements"], (path, dom["mjxContainers"], dom["mathElements"])
        assert not dom["mathErrors"], f"{path}: MathJax errors: {dom['mathErrors'][:5]}"
    raw = _problems(reports, lambda r: r.dom["rawMath"])
    assert not raw, "LaTeX source left in the page text (outside code):\n" + "\n".join(raw)


def test_every_mermaid_diagram_is_drawn_as_svg(site):
    _, reports = site
    with_mermaid = {path: r.dom for path, r in reports.items() if r.dom["mermaid"]}
    assert len(with_mermaid) >= 10, f"expected Mermaid diagrams in most chapters: {sorted(with_mermaid)}"
    for path, dom in with_mermaid.items():
        assert not dom["mermaidUndrawn"], f"{path}: Mermaid blocks without SVG: {dom['mermaidUndrawn']}"
        assert not dom["mermaidErrors"], f"{path}: Mermaid drew a syntax error: {dom['mermaidErrors']}"


def test_every_image_loads(site):
    _, reports = site
    assert sum(r.dom["images"] for r in reports.values()) >= 20
    broken = _problems(reports, lambda r: r.dom["brokenImages"])
    assert not broken, "images that did not load (naturalWidth 0):\n" + "\n".join(broken)


@pytest.mark.parametrize("term", SEARCHES)
def test_search_finds_chinese_and_english_terms(site, term):
    _, reports = site
    report = reports[browser_check.search_path(term)]
    assert report.search_status, f"search for {term!r} did not finish"
    results = report.dom["searchResults"]
    assert results, f"search for {term!r} found nothing: {report.search_status}"
    assert all(link.split("#")[0].endswith(".html") for link in results), results


def test_internal_links_and_anchors_resolve(site):
    html, reports = site
    assert sum(len(r.internal_links) for r in reports.values()) > 100
    anchored = [link for r in reports.values() for link in r.internal_links if link[1]]
    assert anchored, "no internal link with an #anchor was checked"
    problems = browser_check.link_problems(html, reports)
    assert not problems, "broken internal links:\n" + "\n".join(problems)


def test_every_code_cell_has_a_copy_button(site):
    _, reports = site
    assert sum(r.dom["codeBlocks"] for r in reports.values()) > 300
    missing = _problems(reports, lambda r: r.dom["codeWithoutCopyButton"])
    assert not missing, "code blocks without sphinx-copybutton's button:\n" + "\n".join(missing[:20])


def test_every_notebook_page_offers_its_notebook_for_download(site):
    """The theme's download menu links the page's .ipynb (test_internal_links… checks the file is served)."""
    html, reports = site
    for doc in nbtools.toc_files():
        if doc.startswith("chapters/"):
            links = reports[f"{doc}.html"].dom["sourceDownloads"]
            assert any(link.endswith(f"/_sources/{doc}.ipynb") for link in links), (doc, links)
            assert (html / "_sources" / f"{doc}.ipynb").is_file()


def test_long_outputs_are_collapsed(site):
    _, reports = site
    tall = _problems(reports, lambda r: r.dom["tallOutputs"])
    assert not tall, f"text outputs taller than {browser_check.TALL_OUTPUT_PX} px:\n" + "\n".join(tall)


def test_screenshots_are_written(site):
    for stem in SHOTS:
        shot = SCREENSHOTS / f"{stem}.png"
        assert shot.is_file() and shot.stat().st_size > 10_000, shot
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checker_reports_what_is_broken(tmp_path, chromium):
    """A tiny broken site: the checker must see each fault (so the checks above can fail)."""
    (tmp_path / "index.html").write_text(
        '<html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        '<script src="missing.js"></script>'
        '<script>console.error("boom")</script></head><body id="top">'
        '<p>raw $$x^2$$ left</p><span class="math">\\(y\\)</span>'
        '<pre class="mermaid">graph LR; A-->B</pre>'
        '<img src="missing.png"><a href="other.html#nowhere">x</a><a href="gone.html">y</a>'
        '<a href="#top">top</a><div class="highlight"><pre>print(1)</pre></div>'
        '<div class="cell_output"><div class="output stream"><pre>' + "line<br>" * 80 + '</pre></div></div>'
        '</body></html>', encoding="utf-8")
    (tmp_path / "other.html").write_text(
        '<html><head><link rel="icon" href="data:,"></head><body><p id="here">ok</p></body></html>',
        encoding="utf-8")
    reports = browser_check.check_site(tmp_path, searches=(), settle_timeout=2.0,
                                       executable=chromium)
    page = reports["index.html"]
    assert page.status == 200 and reports["other.html"].status == 200
    assert any("missing.js" in f for f in page.failed_requests), page.failed_requests
    assert any("boom" in e for e in page.console_errors), page.console_errors
    assert any("$$x^2$$" in t for t in page.dom["rawMath"]), page.dom["rawMath"]
    assert len(page.dom["untypesetMath"]) == 1 and page.dom["mjxContainers"] == 0
    assert len(page.dom["mermaidUndrawn"]) == 1
    assert page.dom["brokenImages"] and page.dom["brokenImages"][0].endswith("missing.png")
    assert page.dom["codeBlocks"] == 1 and len(page.dom["codeWithoutCopyButton"]) == 1
    assert len(page.dom["tallOutputs"]) == 1, page.dom["tallOutputs"]
    problems = browser_check.link_problems(tmp_path, reports)
    assert sorted(problems) == [
        "index.html: link to missing anchor other.html#nowhere",
        "index.html: link to missing file gone.html",
    ], problems
    assert not reports["other.html"].console_errors and not reports["other.html"].failed_requests
