"""Open every page of the built HTML book in headless Chromium and report what a reader would meet.

Usage: .venv/bin/python book/tools/browser_check.py [HTML_DIR] [--screenshots DIR]

The book is served over HTTP from 127.0.0.1 (as a reader's web server would) and the system
Chromium is driven over the DevTools protocol (websocket-client, no browser download). For each
page it records the HTTP status, failed or non-local requests, JavaScript console errors, typeset
formulas (MathJax), Mermaid diagrams drawn as SVG, images that did not load, element ids and
internal links; `link_problems` then checks every internal link against the files and ids of the
built site. tests/test_browser.py asserts on these reports.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import websocket  # websocket-client

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = (1280, 900)
TALL_OUTPUT_PX = 720  # a text output taller than this scrolls inside its box (custom.css) instead of the page

# Runs in the page after the load event: wait for MathJax, Mermaid and the images to finish.
SETTLE_JS = """
(async () => {
  const deadline = Date.now() + %(timeout_ms)d;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // MathJax loads asynchronously: on a page with formulas, wait for it to start before awaiting its typesetting
  while (Date.now() < deadline && document.querySelector('.math') &&
         !(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    await sleep(100);
  }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  while (Date.now() < deadline &&
         [...document.querySelectorAll('.mermaid')].some((m) => !m.querySelector('svg'))) {
    await sleep(100);
  }
  // sphinx-copybutton adds its buttons once the DOM is loaded; on a busy machine that can come after the load event
  if (document.querySelector('script[src*="copybutton"]')) {
    while (Date.now() < deadline &&
           [...document.querySelectorAll('div.highlight')].some((d) => !d.querySelector('button.copybtn'))) {
      await sleep(100);
    }
  }
  for (const img of document.images) img.loading = 'eager';  // off-screen lazy images too
  await Promise.all([...document.images].map((img) => img.decode().catch(() => null)));
  return true;
})()
"""

# Collects what the checks need from the rendered page (returned by value as JSON).
COLLECT_JS = """
(() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawMath = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    // Search result snippets are Sphinx's plain-text extracts of the page source: not typeset.
    if (n.parentElement && n.parentElement.closest(skip + ', #search-results')) continue;
    const t = n.textContent;
    for (const token of ['$$', '\\\\(', '\\\\)', '\\\\[', '\\\\]', '\\\\begin{']) {
      const i = t.indexOf(token);
      if (i >= 0) { rawMath.push(t.slice(Math.max(0, i - 30), i + 40).trim()); break; }
    }
  }
  const describe = (el) => {
    const sec = el.closest('section[id]');
    return (sec ? '#' + sec.id + ' ' : '') + el.outerHTML.slice(0, 120);
  };
  return {
    title: document.title,
    mathElements: document.querySelectorAll('.math').length,
    untypesetMath: [...document.querySelectorAll('.math')]
      .filter((m) => !m.querySelector('mjx-container')).map(describe),
    mathErrors: [...document.querySelectorAll('mjx-merror')].map(
      (e) => e.getAttribute('data-mjx-error') || e.textContent),
    mjxContainers: document.querySelectorAll('mjx-container').length,
    rawMath: rawMath,
    mermaid: document.querySelectorAll('.mermaid').length,
    mermaidUndrawn: [...document.querySelectorAll('.mermaid')]
      .filter((m) => !m.querySelector('svg')).map(describe),
    mermaidErrors: [...document.querySelectorAll('.mermaid svg[aria-roledescription="error"]')]
      .map(describe),
    images: document.images.length,
    brokenImages: [...document.images]
      .filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.currentSrc || i.src),
    ids: [...document.querySelectorAll('[id]')].map((e) => e.id)
      .concat([...document.querySelectorAll('a[name]')].map((e) => e.getAttribute('name'))),
    links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
    codeBlocks: document.querySelectorAll('div.highlight').length,
    codeWithoutCopyButton: [...document.querySelectorAll('div.highlight')]
      .filter((d) => !d.querySelector('button.copybtn')).map(describe),
    sourceDownloads: [...document.querySelectorAll('.dropdown-download-buttons a[href]')].map((a) => a.href),
    tallOutputs: [...document.querySelectorAll('.cell_output > *')]
      .filter((o) => !o.querySelector('img, svg') && o.getBoundingClientRect().height > %(tall_px)d)
      .map((o) => Math.round(o.getBoundingClientRect().height) + ' px: ' + describe(o)),
    searchResults: [...document.querySelectorAll('#search-results ul.search li a')]
      .map((a) => a.href),
  };
})()
"""

SEARCH_DONE_JS = """
(async () => {
  const deadline = Date.now() + %(timeout_ms)d;
  while (Date.now() < deadline) {
    // Only _finishSearch fills the status line. (Search._pulse_status is no signal: a pending
    // pulse timer may restart the dots after stopPulse, a race in Sphinx's searchtools.js.)
    if (typeof Search !== 'undefined' && Search.status && Search.status.innerText)
      return Search.status.innerText;
    await new Promise((r) => setTimeout(r, 100));
  }
  return null;
})()
"""


REDIRECT_JS = "!!document.querySelector('meta[http-equiv=\"refresh\" i]')"


class BrowserError(RuntimeError):
    """Chromium could not be started or did not answer over the DevTools protocol."""


@dataclass
class PageReport:
    """What one page showed in the browser."""

    path: str  # relative to the site root, e.g. chapters/ch01_attention.html
    status: int | None = None
    failed_requests: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dom: dict[str, Any] = field(default_factory=dict)
    search_status: str | None = None
    final_url: str = ""  # after redirects
    internal_links: list[tuple[str, str]] = field(default_factory=list)  # (site path, anchor)


def find_chromium() -> str | None:
    """Path of the system Chromium ($CHROMIUM, else the first browser on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def missing_browser_deps() -> list[str]:
    """What the browser test and `make pdf` need but this machine lacks (Chromium, a CJK font)."""
    missing = [] if find_chromium() else ["Chromium (or set CHROMIUM)"]
    fc_list = shutil.which("fc-list")
    fonts = subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True).stdout if fc_list else ""
    if "CJK" not in fonts:
        missing.append("a CJK font such as Noto Sans CJK")
    return missing


def require_chromium() -> str:
    """Path of the system Chromium, or BrowserError saying how to install it."""
    if path := find_chromium():
        return path
    raise BrowserError("no Chromium found: run `make browser-deps` (Debian/Ubuntu: apt-get install chromium "
                       "fonts-noto-cjk) or set CHROMIUM to a Chromium or Chrome executable")


_BUILDS: dict[Path, tuple[subprocess.CompletedProcess, Path]] = {}


def build_once(out: Path, timeout: float = 900) -> tuple[subprocess.CompletedProcess, Path]:
    """Build the book into out with build_book.py once per process; return the process and out/html.

    tests/test_book.py and tests/test_browser.py share one build this way.
    """
    out = Path(out).resolve()
    if out not in _BUILDS:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "book" / "tools" / "build_book.py"), "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )
        _BUILDS[out] = (proc, out / "html")
    return _BUILDS[out]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature (shadows format)
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve directory on a free 127.0.0.1 port in a thread; yield the base URL (ending in /)."""
    if not (Path(directory) / "index.html").is_file():
        raise FileNotFoundError(f"{directory} has no index.html: build the book first")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Chromium:
    """A headless Chromium with one tab, driven over the DevTools protocol."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no Chromium found: install it (apt-get install chromium) or set CHROMIUM")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="bigmodel-chromium-")
        self._log = open(Path(self._profile.name) / "chromium.log", "wb")  # closed in close()
        self._proc = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--hide-scrollbars", "--mute-audio", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
             "--remote-debugging-port=0", f"--user-data-dir={self._profile.name}/profile",
             "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._id = 0
        self.events: list[dict] = []
        try:
            self._ws = websocket.create_connection(self._browser_url(), timeout=timeout,
                                                   suppress_origin=True)
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                self.send(f"{domain}.enable", session=True)
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1,
                       "mobile": False}, session=True)
        except Exception:
            self.close()
            raise

    def _browser_url(self) -> str:
        port_file = Path(self._profile.name) / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = (Path(self._profile.name) / "chromium.log").read_text(errors="replace")
                raise BrowserError(f"{self.executable} exited with {self._proc.returncode}:\n{log[-2000:]}")
            if port_file.is_file():
                lines = port_file.read_text().split()
                if len(lines) == 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise BrowserError(f"{self.executable} did not open its DevTools port in {self.timeout:.0f} s")

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Send one DevTools command and wait for its answer; events that arrive meanwhile are kept."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self._ws.send(json.dumps(message))
        while True:
            reply = self._receive(time.monotonic() + self.timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _receive(self, deadline: float) -> dict:
        self._ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException as exc:
            raise BrowserError("Chromium did not answer in time") from exc
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str, timeout: float | None = None) -> dict:
        """Wait for the next event `method` not yet seen (kept events count) and return it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        start = 0
        while True:
            for i in range(start, len(self.events)):
                if self.events[i].get("method") == method:
                    return self.events.pop(i)
            start = len(self.events)
            if time.monotonic() > deadline:
                raise BrowserError(f"no {method} within {timeout or self.timeout:.0f} s")
            self._receive(deadline)

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = 60.0) -> None:
        """Navigate the tab to url and wait for its load event."""
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired", timeout)

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """Write a PNG of the visible part of the page (scrolled to selector's first match) to path."""
        import base64

        if selector:
            self.evaluate(f"(async () => {{ const e = document.querySelector({json.dumps(selector)}); "
                          "if (e) e.scrollIntoView({block: 'center'}); "
                          "await new Promise((r) => setTimeout(r, 300)); })()")
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        with contextlib.suppress(Exception):
            self._ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        # Chromium's helper processes can still be writing into the profile for a moment after the browser exits
        # ("Directory not empty"): retry the removal briefly before giving up.
        for attempt in range(40):
            try:
                self._profile.cleanup()
                return
            except OSError:
                if attempt == 39:
                    raise
                time.sleep(0.25)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _network_report(report: PageReport, events: list[dict], base: str) -> None:
    """Fill status, failed/remote requests and console errors from the page's events."""
    base_netloc = urlsplit(base).netloc
    urls: dict[str, str] = {}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            parts = urlsplit(url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != base_netloc:
                report.remote_requests.append(url)
        elif method == "Network.responseReceived":
            response = params["response"]
            if params.get("type") == "Document" and report.status is None:
                report.status = response["status"]
            if response["status"] >= 400:
                report.failed_requests.append(f"{response['status']} {response['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], params["requestId"])
            report.failed_requests.append(f"{params.get('errorText')} {url}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            report.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            report.console_errors.append(f"uncaught: {text} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            report.console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")


def _wait_for_arrival(browser: Chromium, left: str, timeout: float) -> None:
    """After a redirect page: wait until the browser shows another URL, fully loaded (the redirect page's own
    load event may come first, so waiting for one load event is not enough)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(BrowserError):  # the context is destroyed while navigating
            if browser.evaluate("location.href") != left and browser.evaluate("document.readyState") == "complete":
                return
        time.sleep(0.1)


def check_page(browser: Chromium, base: str, path: str, settle_timeout: float = 30.0) -> PageReport:
    """Open base+path, let MathJax/Mermaid/images finish, and collect the page's report."""
    report = PageReport(path=path)
    browser.open(base + path)
    for attempt in range(3):  # a page that redirects (index.html) is followed to its target
        try:
            if browser.evaluate(REDIRECT_JS) and attempt < 2:
                _wait_for_arrival(browser, base + path, settle_timeout)
                continue
            browser.evaluate(SETTLE_JS % {"timeout_ms": int(settle_timeout * 1000)})
            if path.startswith("search.html"):
                report.search_status = browser.evaluate(
                    SEARCH_DONE_JS % {"timeout_ms": int(settle_timeout * 1000)})
            report.dom = browser.evaluate(COLLECT_JS % {"tall_px": TALL_OUTPUT_PX})
            break
        except BrowserError as exc:
            if not any(w in str(exc) for w in ("navigated", "context was destroyed")) or attempt == 2:
                raise
            browser.wait_for("Page.loadEventFired")
    report.final_url = browser.evaluate("location.href")
    netloc = urlsplit(base).netloc
    for href in sorted(set(report.dom.get("links", []))):
        parts = urlsplit(href)
        if parts.scheme in ("http", "https") and parts.netloc == netloc:
            target = unquote(parts.path).lstrip("/")
            if target == "" or target.endswith("/"):
                target += "index.html"
            report.internal_links.append((target, unquote(parts.fragment)))
    time.sleep(0.1)  # let late console/network events arrive
    with contextlib.suppress(BrowserError):
        browser.send("Runtime.evaluate", {"expression": "0"}, session=True)
    _network_report(report, list(browser.events), base)
    return report


def site_pages(html: Path) -> list[str]:
    """Every HTML page of the built site (outside _static and _sources), relative, sorted."""
    pages = []
    for page in html.rglob("*.html"):
        rel = page.relative_to(html)
        if rel.parts[0] not in ("_static", "_sources", "_images"):
            pages.append(rel.as_posix())
    return sorted(pages)


def link_problems(html: Path, reports: dict[str, PageReport]) -> list[str]:
    """Internal links whose file does not exist or whose #anchor is no id of the target page."""
    ids = {path: set(r.dom.get("ids", [])) for path, r in reports.items()}
    problems = []
    for path, report in reports.items():
        for target, anchor in report.internal_links:
            shown = target + (f"#{anchor}" if anchor else "")
            if not (html / target).is_file():
                problems.append(f"{path}: link to missing file {shown}")
            elif anchor and target in ids and anchor not in ids[target]:
                problems.append(f"{path}: link to missing anchor {shown}")
            elif anchor and target not in ids and target.endswith(".html"):
                problems.append(f"{path}: anchor into a page that was not opened: {shown}")
    return problems


def search_path(term: str) -> str:
    """The site path of the built-in search for term."""
    from urllib.parse import quote

    return f"search.html?q={quote(term)}"


def check_site(html: Path, screenshots: Path | None = None,
               searches: tuple[str, ...] = ("注意力", "Transformer"),
               shots: dict[str, tuple[str, str | None]] | None = None,
               executable: str | None = None, settle_timeout: float = 30.0) -> dict[str, PageReport]:
    """Check every page of html (plus search.html?q=... for each search term); return the reports.

    shots maps a screenshot file stem to (page path, CSS selector to scroll to or None), e.g.
    {"landing": ("index.html", None)}; search_path(term) works as a page path too.
    Screenshots are written to screenshots/ when it is given.
    """
    pages = site_pages(html) + [search_path(term) for term in searches]
    wanted: dict[str, list[tuple[str, str | None]]] = {}
    for stem, (page, selector) in (shots or {}).items():
        if page not in pages:
            raise ValueError(f"screenshot {stem!r}: {page} is not a page of {html}")
        wanted.setdefault(page, []).append((stem, selector))
    reports: dict[str, PageReport] = {}
    with serve(html) as base, Chromium(executable) as browser:
        for path in pages:
            reports[path] = check_page(browser, base, path, settle_timeout)
            for stem, selector in wanted.get(path, []) if screenshots is not None else []:
                browser.screenshot(screenshots / f"{stem}.png", selector)
    return reports


def page_problems(report: PageReport) -> list[str]:
    """Everything wrong with one page, one line each (empty when the page is fine)."""
    dom = report.dom
    found = [] if report.status == 200 else [f"HTTP status {report.status}"]
    found += report.failed_requests + [f"remote request {u}" for u in report.remote_requests]
    found += report.console_errors
    found += [f"formula not typeset: {m}" for m in dom.get("untypesetMath", []) + dom.get("mathErrors", [])]
    found += [f"LaTeX source in the text: {t}" for t in dom.get("rawMath", [])]
    found += [f"Mermaid not drawn: {m}" for m in dom.get("mermaidUndrawn", []) + dom.get("mermaidErrors", [])]
    found += [f"image not loaded: {i}" for i in dom.get("brokenImages", [])]
    found += [f"code block without a copy button: {c}" for c in dom.get("codeWithoutCopyButton", [])]
    found += [f"output not collapsed: {o}" for o in dom.get("tallOutputs", [])]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="?", type=Path, default=ROOT / "book" / "_build" / "html",
                        help="the built HTML book (default: book/_build/html, as `make book` writes it)")
    parser.add_argument("--screenshots", type=Path, default=None, help="write landing.png here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    html = args.html.resolve()
    reports = check_site(html, args.screenshots, shots={"landing": ("index.html", None)},
                         executable=require_chromium())
    problems = [f"{path}: {p}" for path, r in reports.items() for p in page_problems(r)]
    problems += link_problems(html, reports)
    for path, r in reports.items():
        search = f", search finished: {len(r.dom['searchResults'])} results" if r.search_status else ""
        print(f"{path}: {r.dom['mjxContainers']} formulas, {r.dom['mermaid']} diagrams, "
              f"{r.dom['images']} images, {len(r.internal_links)} internal links{search}")
    print("\n".join(problems) or "no problems")
    print(f"{len(reports)} pages checked in {time.perf_counter() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
