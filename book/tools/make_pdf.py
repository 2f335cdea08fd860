"""Build the PDF edition of the book (make pdf): one A4 PDF of every page, in table-of-contents order.

Usage: .venv/bin/python book/tools/make_pdf.py [--out DIR] [--browser PATH]

Steps: build_book.py builds the book with Sphinx's `singlehtml` builder (one HTML page
holding every chapter); headless Chromium (Debian's `chromium`, found on PATH or given
with --browser / $CHROMIUM) opens that page, waits until MathJax has typeset every formula,
Mermaid has drawn every diagram and every image has loaded, applies the print style below
and prints it with the DevTools protocol (browser_check.Chromium; the page is served from 127.0.0.1).
Solution cells are printed expanded (labelled 参考答案), like every other folded cell.
The last line printed names the PDF (default book/_build/pdf/大模型应用开发.pdf).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

import browser_check  # the Chromium driver and local server of the browser test (same folder)
import build_book  # reused for the Sphinx build

ROOT = build_book.ROOT
DEFAULT_OUT = build_book.DEFAULT_OUT / "pdf"
PDF_NAME = "大模型应用开发.pdf"
RENDER_TIMEOUT_S = 240.0

# Print style: A4, no navigation, wrapped code, every chapter on a new page.
PRINT_CSS = """
@page { size: A4; margin: 15mm 14mm 16mm 14mm; }
@media print {
  .bd-header, .bd-header-article, .bd-sidebar-primary, .bd-sidebar-secondary,
  .bd-footer, .bd-footer-article, .bd-footer-content, .prev-next-area, .skip-link,
  #pst-back-to-top, .headerlink, .copybtn, button, .mermaid-fullscreen-btn,
  .search-button-field, .header-article-items, .toggle-details__summary-icon
  { display: none !important; }
  html, body { background: #fff !important; margin: 0 !important; padding: 0 !important; }
  body > article.bd-article
  { display: block !important; max-width: none !important; width: auto !important;
    margin: 0 !important; padding: 0 !important; overflow: visible !important; }
  pre, pre code, div.highlight pre, .output pre, .cell_output pre {
    white-space: pre-wrap !important; overflow-wrap: anywhere !important;
    word-break: break-all; overflow: visible !important; max-height: none !important;
  }
  .cell_output, .output, div.highlight, .table-wrapper, .pst-scrollable-table-container
  { overflow: visible !important; max-height: none !important; }
  table { max-width: 100% !important; word-break: break-word; }
  img, svg, figure, pre.mermaid, mjx-container[display="true"] { break-inside: avoid; }
  img { max-width: 100% !important; height: auto !important; }
  mjx-container[display="true"] { overflow: visible !important; }
  h1, h2, h3, h4 { break-after: avoid; }
  details > summary { list-style: none; font-weight: 600; }
  details > summary::-webkit-details-marker { display: none; }
  .pdf-chapter-break { display: block; break-before: page; }
}
"""

# Run in the page after load: wait for MathJax, Mermaid and images, unfold folded cells,
# mark chapter starts; resolve to counts that main() checks.
READY_JS = """
async (chapterIds, timeoutMs) => {
  const deadline = Date.now() + timeoutMs;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() < deadline) await sleep(100);
  if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  const pendingMermaid = () => [...document.querySelectorAll("pre.mermaid")].filter((e) => !e.querySelector("svg"));
  while (pendingMermaid().length && Date.now() < deadline) await sleep(200);
  await Promise.all([...document.images].map((img) => img.complete ? null :
    new Promise((r) => { img.addEventListener("load", r); img.addEventListener("error", r); })));
  for (const d of document.querySelectorAll("details")) {
    d.open = true;
    const s = d.querySelector(":scope > summary");
    // Toggle labels come as a pair (显示…/隐藏…): print one, without the verb.
    const label = s && (s.querySelector(".collapsed") || s);
    if (s) s.textContent = label.textContent.trim().replace(/^(显示|隐藏|点击显示|点击隐藏)\\s*/, "");
  }
  let marked = 0;
  for (const id of chapterIds) {
    const el = document.getElementById("document-" + id);
    if (el) { el.classList.add("pdf-chapter-break"); marked += 1; }
  }
  // Print the article alone: no header, sidebars, footer or theme layout around it.
  const article = document.querySelector("article.bd-article");
  if (article) document.body.replaceChildren(article);
  const style = document.createElement("style");
  style.textContent = %s;
  document.head.appendChild(style);
  if (document.fonts) await document.fonts.ready;
  return {
    formulas: document.querySelectorAll("mjx-container").length,
    mathjaxErrors: document.querySelectorAll("mjx-merror").length,
    mermaid: document.querySelectorAll("pre.mermaid").length,
    mermaidPending: pendingMermaid().length,
    images: document.images.length,
    imagesBroken: [...document.images].filter((i) => !i.naturalWidth).map((i) => i.getAttribute("src")),
    chapters: chapterIds.length,
    chaptersMarked: marked,
    articleFound: Boolean(article),
  };
}
""" % json.dumps(PRINT_CSS)

FOOTER = ('<div style="width:100%;font-size:8px;color:#666;text-align:center;">'
          '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')


def toc_pages() -> tuple[str, list[str]]:
    """The root page and the top-level (chapter and appendix) pages of book/_toc.yml, in order."""
    toc = yaml.safe_load(build_book.TOC.read_text(encoding="utf-8"))
    entries = [c for part in toc.get("parts", []) for c in part.get("chapters", [])]
    entries += toc.get("chapters", [])
    return toc["root"], [e["file"] for e in entries if "file" in e]


def print_pdf(browser: str, page: Path, pdf: Path, chapter_ids: list[str]) -> dict:
    """Open page (served from 127.0.0.1) in headless Chromium, wait until it is fully rendered, print it to pdf."""
    with browser_check.serve(page.parent) as base, \
            browser_check.Chromium(browser, timeout=RENDER_TIMEOUT_S + 360) as chrome:
        chrome.open(base + page.name, timeout=120)
        stats = chrome.evaluate(f"({READY_JS})({json.dumps(chapter_ids)}, {int(RENDER_TIMEOUT_S * 1000)})")
        chrome.send("Emulation.setEmulatedMedia", {"media": "print"}, session=True)
        printed = chrome.send("Page.printToPDF", {
            "printBackground": True, "preferCSSPageSize": True,
            "paperWidth": 8.27, "paperHeight": 11.69,  # A4 in inches, if CSS gives no size
            "displayHeaderFooter": True, "headerTemplate": "<div></div>", "footerTemplate": FOOTER,
            "generateDocumentOutline": True, "transferMode": "ReturnAsStream",
        }, session=True)
        with pdf.open("wb") as fh:
            while True:
                chunk = chrome.send("IO.read", {"handle": printed["stream"], "size": 1 << 22}, session=True)
                data = chunk.get("data", "")
                fh.write(base64.b64decode(data) if chunk.get("base64Encoded") else data.encode("latin-1"))
                if chunk.get("eof"):
                    break
        chrome.send("IO.close", {"handle": printed["stream"]}, session=True)
    return stats


def _problems(stats: dict) -> list[str]:
    problems = []
    if stats["mermaidPending"]:
        problems.append(f"{stats['mermaidPending']} of {stats['mermaid']} Mermaid diagrams were not drawn")
    if stats["mathjaxErrors"]:
        problems.append(f"{stats['mathjaxErrors']} formulas failed to typeset")
    if stats["imagesBroken"]:
        problems.append(f"images that did not load: {stats['imagesBroken'][:5]}")
    if not stats["articleFound"]:
        problems.append("no <article class=\"bd-article\"> in the page: has the theme changed?")
    if stats["chaptersMarked"] != stats["chapters"]:
        problems.append(f"only {stats['chaptersMarked']} of {stats['chapters']} chapters found in the page")
    return problems


def make_pdf(out: Path, browser: str) -> Path:
    """Build the single-page HTML into out/singlehtml and print it to out/大模型应用开发.pdf."""
    out.mkdir(parents=True, exist_ok=True)
    status = build_book.build(out, execute=False, builder="singlehtml")
    root, chapters = toc_pages()
    built = out / "singlehtml" / f"{root}.html"
    if status != 0 or not built.is_file():
        raise RuntimeError("single-page HTML build failed (warnings count as errors; see above)")
    # singlehtml writes the root page at its docname (book/intro.html) but links every
    # asset relative to the build folder: put a copy there so _static/ and _images/ resolve.
    page = out / "singlehtml" / "book.html"
    shutil.copyfile(built, page)
    pdf = out / PDF_NAME
    stats = print_pdf(browser, page, pdf, chapters)
    print("Rendered: {formulas} formulas, {mermaid} Mermaid diagrams, {images} images, "
          "{chapters} chapters".format(**stats), flush=True)
    problems = _problems(stats)
    if problems:
        raise RuntimeError("; ".join(problems))
    return pdf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="build folder (default: book/_build/pdf)")
    parser.add_argument("--browser", help="Chromium executable (default: $CHROMIUM or chromium on PATH)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        browser = args.browser or browser_check.find_chromium()
        if not browser:
            raise RuntimeError("Chromium not found: install Debian's chromium (apt-get install chromium) "
                               "or name the browser with --browser / $CHROMIUM")
        build_book.ensure_vendor()
        pdf = make_pdf(args.out.resolve(), browser)
    except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"PDF built in {time.perf_counter() - start:.0f} s ({pdf.stat().st_size / 1e6:.1f} MB)")
    print(f"Open {build_book._display(pdf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
