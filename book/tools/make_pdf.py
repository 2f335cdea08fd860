"""Build the PDF edition of the book (make pdf): one A4 PDF of every page, in table-of-contents order.

Usage: .venv/bin/python book/tools/make_pdf.py [--out DIR] [--browser PATH]

Steps: build_book.py builds the book with Sphinx's `singlehtml` builder (one HTML page
holding every chapter); headless Chromium (Debian's `chromium`, found on PATH or given
with --browser / $CHROMIUM) opens that page, waits until MathJax has typeset every formula,
Mermaid has drawn every diagram and every image has loaded, applies the print style below
and prints it with the DevTools protocol (browser_check.Chromium; the page is served from 127.0.0.1).
Solution cells are printed expanded (labelled 参考答案), like every other folded cell.

The PDF opens like a printed book: a title page (title, subtitle, edition, build date) and a
table of contents (chapters and their sections) with page numbers, then the preface. The page
numbers come from a second print: the first one is read back with pypdf, where every contents
entry is a link whose named destination gives the page its heading landed on; the numbers are
written into the contents (fixed-width boxes, so nothing moves) and the page is printed again
until the PDF's pages agree with them (see print_pdf).
Links between pages of the book become links inside the PDF (singlehtml writes them as links to
book/intro.html#…, which would point at the temporary local server).
The last line printed names the PDF (default book/_build/pdf/大模型应用开发.pdf).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pypdf
import yaml

import browser_check  # the Chromium driver and local server of the browser test (same folder)
import build_book  # reused for the Sphinx build

ROOT = build_book.ROOT
DEFAULT_OUT = build_book.DEFAULT_OUT / "pdf"
PDF_NAME = "大模型应用开发.pdf"
RENDER_TIMEOUT_S = 240.0
SUBTITLE = "从注意力公式到微调、压缩与部署：在笔记本电脑上动手实践"
EDITION = "2026 年版"
CONTENTS_TITLE = "目录"
MAX_PRINTS = 4  # full prints until the contents' page numbers agree with the PDF (two in practice)

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
/* Front matter (FRONT_JS): a title page, then the contents, each starting a page. */
.pdf-title-page { break-after: page; height: 255mm; display: flex; flex-direction: column;
  justify-content: center; text-align: center; }
.pdf-title-page .pdf-title { font-size: 40pt; font-weight: 700; letter-spacing: 0.08em; margin-bottom: 10mm; }
.pdf-title-page .pdf-subtitle { font-size: 15pt; color: #333; margin-bottom: 40mm; }
.pdf-title-page .pdf-edition { font-size: 14pt; margin-bottom: 4mm; }
.pdf-title-page .pdf-author, .pdf-title-page .pdf-date { font-size: 11pt; color: #555; margin-top: 2mm; }
.pdf-contents { break-after: page; }
.pdf-contents h1 { margin: 0 0 6mm 0; }
.pdf-contents a.pdf-toc-entry { display: flex; align-items: baseline; color: inherit !important;
  text-decoration: none !important; break-inside: avoid; }
.pdf-contents a.pdf-toc-entry.level-1 { font-weight: 600; margin-top: 2.6mm; }
.pdf-contents a.pdf-toc-entry.level-2 { padding-left: 2em; font-size: 0.93em; margin-top: 0.7mm; }
.pdf-contents .pdf-toc-title { flex: 0 1 auto; }
.pdf-contents .pdf-toc-dots { flex: 1 1 auto; min-width: 2em; margin: 0 0.4em;
  border-bottom: 1px dotted #888; transform: translateY(-0.25em); }
.pdf-contents .pdf-toc-page { flex: 0 0 2.6em; text-align: right; font-variant-numeric: tabular-nums; }
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

# Run after READY_JS: point same-book links into the page, add the title page and the contents.
# Returns the contents entries (the ids their links point to) and how many links were repointed.
FRONT_JS = """
(front, chapterIds) => {
  const article = document.body.querySelector("article.bd-article");
  const docOf = (el) => {  // the id of the document span before el (singlehtml marks each page)
    let best = "";
    for (const span of article.querySelectorAll('span[id^="document-"]')) {
      if (span.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) best = span.id; else break;
    }
    return best;
  };
  // Dropdown admonitions (solutions) print open: sphinx-togglebutton opens them on "beforeprint"
  // and closes them on "afterprint"; take them out of its hands so every print lays out the same.
  for (const el of article.querySelectorAll(".admonition.toggle, .admonition.dropdown")) {
    el.classList.remove("toggle", "toggle-hidden");
  }
  // singlehtml links every reference as book/intro.html#id; ids repeat between pages
  // (id7 on several pages), so pick the bibliography entry or the target on the link's own page.
  let relinked = 0, renamed = 0;
  for (const a of article.querySelectorAll("a[href]")) {
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !url.hash || a.getAttribute("href").startsWith("#")) continue;
    const id = decodeURIComponent(url.hash.slice(1));
    const targets = [...article.querySelectorAll(`[id="${CSS.escape(id)}"]`)];
    if (!targets.length) continue;
    let target = targets[0];
    if (targets.length > 1) {
      const doc = docOf(a);
      target = targets.find((t) => t.matches(".citation, [role='doc-biblioentry']"))
        || targets.find((t) => docOf(t) === doc) || targets[0];
    }
    if (target !== targets[0]) { target.id = `${id}--${targets.indexOf(target)}`; renamed += 1; }
    a.setAttribute("href", "#" + target.id);
    relinked += 1;
  }
  // Contents: the preface's title, each chapter-level page (level 1) with its sections and
  // section pages (level 2), in reading order.
  const top = new Set(chapterIds.map((id) => "document-" + id));
  const entries = [];
  const add = (heading, level) => {
    if (!heading.id) heading.id = `pdf-toc-${entries.length + 1}`;
    const title = heading.cloneNode(true);
    title.querySelectorAll(".headerlink").forEach((e) => e.remove());
    entries.push({id: heading.id, level, title});
  };
  let state = "root", titlePending = false, base = 0;
  for (const el of article.querySelectorAll('span[id^="document-"], h1, h2, h3, h4')) {
    if (el.tagName === "SPAN") { state = top.has(el.id) ? "top" : "sub"; titlePending = true; continue; }
    const level = Number(el.tagName[1]);
    if (state === "root") { if (!entries.length) add(el, 1); }
    else if (titlePending) {
      if (state === "top") base = level;
      add(el, state === "top" ? 1 : 2);
      titlePending = false;
    }
    else if (state === "top" && level === base + 1) add(el, 2);
  }
  const make = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const titlePage = make("section", "pdf-title-page");
  titlePage.append(make("div", "pdf-title", front.title), make("div", "pdf-subtitle", front.subtitle),
                   make("div", "pdf-edition", front.edition), make("div", "pdf-author", front.author),
                   make("div", "pdf-date", front.date));
  const contents = make("nav", "pdf-contents");
  contents.append(make("h1", "", front.contentsTitle));
  for (const entry of entries) {
    const link = make("a", `pdf-toc-entry level-${entry.level}`);
    link.href = "#" + entry.id;
    const title = make("span", "pdf-toc-title");
    title.append(...entry.title.childNodes);
    link.append(title, make("span", "pdf-toc-dots"), make("span", "pdf-toc-page", "\u2007"));
    contents.append(link);
  }
  article.prepend(titlePage, contents);
  return {entries: entries.map((e) => ({id: e.id, level: e.level})), relinked, renamed};
}
"""

# Write the page numbers (id -> page) into the contents.
FILL_JS = """
(pages) => {
  let filled = 0;
  for (const link of document.querySelectorAll(".pdf-contents a.pdf-toc-entry")) {
    const page = pages[link.getAttribute("href").slice(1)];
    link.querySelector(".pdf-toc-page").textContent = page === undefined ? "\u2007" : String(page);
    filled += page !== undefined;
  }
  return filled;
}
"""

FOOTER = ('<div style="width:100%;font-size:8px;color:#666;text-align:center;">'
          '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')

PRINT_OPTIONS = {
    "printBackground": True, "preferCSSPageSize": True,
    "paperWidth": 8.27, "paperHeight": 11.69,  # A4 in inches, if CSS gives no size
    "displayHeaderFooter": True, "headerTemplate": "<div></div>", "footerTemplate": FOOTER,
}


def toc_pages() -> tuple[str, list[str]]:
    """The root page and the top-level (chapter and appendix) pages of book/_toc.yml, in order."""
    toc = yaml.safe_load(build_book.TOC.read_text(encoding="utf-8"))
    entries = [c for part in toc.get("parts", []) for c in part.get("chapters", [])]
    entries += toc.get("chapters", [])
    return toc["root"], [e["file"] for e in entries if "file" in e]


def front_matter() -> dict:
    """Title page fields: title and author from book/_config.yml, the edition and the build date.

    The date is today's (UTC), or that of $SOURCE_DATE_EPOCH for a reproducible build.
    """
    config = yaml.safe_load(build_book.CONFIG.read_text(encoding="utf-8"))
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    day = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return {"title": config["title"], "subtitle": SUBTITLE, "edition": EDITION,
            "author": config.get("author", ""), "date": f"{day.year} 年 {day.month} 月 {day.day} 日构建",
            "contentsTitle": CONTENTS_TITLE}


def destination_pages(pdf: Path) -> dict[str, int]:
    """Page number (1-based) of every named destination of pdf, by id (the link targets)."""
    reader = pypdf.PdfReader(pdf)
    pages = {}
    for name, dest in reader.named_destinations.items():
        number = reader.get_destination_page_number(dest)
        if number is not None and number >= 0:
            pages[str(name).lstrip("/")] = number + 1
    return pages


def _print_once(chrome: browser_check.Chromium, pdf: Path) -> None:
    printed = chrome.send("Page.printToPDF", {**PRINT_OPTIONS, "generateDocumentOutline": True,
                                              "transferMode": "ReturnAsStream"}, session=True)
    with pdf.open("wb") as fh:
        while True:
            chunk = chrome.send("IO.read", {"handle": printed["stream"], "size": 1 << 22}, session=True)
            data = chunk.get("data", "")
            fh.write(base64.b64decode(data) if chunk.get("base64Encoded") else data.encode("latin-1"))
            if chunk.get("eof"):
                break
    chrome.send("IO.close", {"handle": printed["stream"]}, session=True)


def print_pdf(browser: str, page: Path, pdf: Path, chapter_ids: list[str], front: dict) -> dict:
    """Open page (served from 127.0.0.1) in headless Chromium, wait until it is fully rendered, add the
    title page and the contents, print it to pdf and print again with the contents' page numbers."""
    with browser_check.serve(page.parent) as base, \
            browser_check.Chromium(browser, timeout=RENDER_TIMEOUT_S + 360) as chrome:
        chrome.open(base + page.name, timeout=120)
        stats = chrome.evaluate(f"({READY_JS})({json.dumps(chapter_ids)}, {int(RENDER_TIMEOUT_S * 1000)})")
        if stats["articleFound"]:
            stats.update(chrome.evaluate(f"({FRONT_JS})({json.dumps(front)}, {json.dumps(chapter_ids)})"))
        chrome.send("Emulation.setEmulatedMedia", {"media": "print"}, session=True)
        # Chromium's pagination of this page alternates between two layouts from one print to the
        # next (a heading at the foot of a page moves to the next one, with no change to the DOM).
        # So the numbers of the first print are written in, a one-page print (a few seconds) takes
        # the other layout's turn, and the page is printed again until a print agrees with them.
        ids = [e["id"] for e in stats.get("entries", [])]
        target: dict[str, int] | None = None
        found: dict[str, int] = {}
        for prints in range(1, MAX_PRINTS + 1):
            stats["prints"] = prints
            if target is not None:
                chrome.send("Page.printToPDF", {**PRINT_OPTIONS, "pageRanges": "1"}, session=True)
            _print_once(chrome, pdf)
            pages = destination_pages(pdf)
            found = {i: pages[i] for i in ids if i in pages}
            if found == target:
                break
            if not ids:
                break
            if target is None:
                target = found
                chrome.evaluate(f"({FILL_JS})({json.dumps(target)})")
        stats["pagesSettled"] = found == target
        stats["contentsMissing"] = [i for i in ids if i not in found]
        stats["contentsPages"] = found
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
    if stats["articleFound"] and not stats.get("entries"):
        problems.append("the contents found no headings")
    if stats.get("contentsMissing"):
        problems.append(f"contents entries without a page in the PDF: {stats['contentsMissing'][:5]}")
    if stats["articleFound"] and not stats.get("pagesSettled"):
        problems.append("the contents' page numbers changed from one print to the next")
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
    stats = print_pdf(browser, page, pdf, chapters, front_matter())
    print("Rendered: {formulas} formulas, {mermaid} Mermaid diagrams, {images} images, "
          "{chapters} chapters".format(**stats), flush=True)
    if stats["articleFound"]:
        print("Contents: {} entries; {} links repointed into the PDF ({} ambiguous ids resolved); "
              "printed {} times".format(len(stats["entries"]), stats["relinked"], stats["renamed"],
                                        stats["prints"]), flush=True)
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
