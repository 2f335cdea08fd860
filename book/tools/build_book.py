"""Build the HTML book from the repository root (make book, make book-exec).

Usage: .venv/bin/python book/tools/build_book.py [--execute] [--out DIR]

The default renders the outputs stored in the notebooks. --execute re-runs them
through a jupyter-cache (profile from BIGMODEL_PROFILE, default full). Any Sphinx
warning fails the build. The last line printed names the index.html to open.

This module is also the Sphinx extension `build_book` (see book/_config.yml): it
installs MathJax and Mermaid with npm into book/_static/vendor, so the HTML loads
no script from the internet, and it loads Mermaid as a classic script so the book
also works when opened from disk (browsers refuse ES modules from file:// URLs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
CONFIG = BOOK / "_config.yml"
TOC = BOOK / "_toc.yml"
LOCK = BOOK / "package-lock.json"
NODE_MODULES = BOOK / "node_modules"
VENDOR = BOOK / "_static" / "vendor"
DEFAULT_OUT = BOOK / "_build"

# What is copied from node_modules into _static/vendor (source -> target, relative).
MATHJAX_COMPONENT = "tex-chtml-full.js"
VENDOR_FILES = {
    f"mathjax/es5/{MATHJAX_COMPONENT}": f"mathjax/{MATHJAX_COMPONENT}",
    # Parts MathJax loads on demand (fonts, menu, accessibility, extensions).
    "mathjax/es5/output": "mathjax/output",
    "mathjax/es5/input": "mathjax/input",
    "mathjax/es5/ui": "mathjax/ui",
    "mathjax/es5/a11y": "mathjax/a11y",
    "mathjax/es5/sre": "mathjax/sre",
    "mathjax/LICENSE": "mathjax/LICENSE",
    "mermaid/dist/mermaid.min.js": "mermaid/mermaid.min.js",
    "mermaid/LICENSE": "mermaid/LICENSE",
}
MERMAID_JS = "vendor/mermaid/mermaid.min.js"  # relative to _static, as in _config.yml


def _lock_hash() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def ensure_vendor() -> None:
    """Run `npm ci` when node_modules is missing or stale, then refresh book/_static/vendor."""
    digest = _lock_hash()
    npm_stamp = NODE_MODULES / ".lock-sha256"
    if not npm_stamp.is_file() or npm_stamp.read_text().strip() != digest:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                "npm not found: the book serves MathJax and Mermaid itself and installs them "
                "with npm (Node.js 18 or later). Install Node.js and run the build again."
            )
        print(f"npm ci in {BOOK.relative_to(ROOT)}/ (MathJax, Mermaid)", flush=True)
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=BOOK, check=True)
        npm_stamp.write_text(digest + "\n")

    vendor_stamp = VENDOR / ".lock-sha256"  # dotfiles are not copied to the HTML
    complete = all((VENDOR / target).exists() for target in VENDOR_FILES.values())
    if complete and vendor_stamp.is_file() and vendor_stamp.read_text().strip() == digest:
        return
    shutil.rmtree(VENDOR, ignore_errors=True)
    for source, target in VENDOR_FILES.items():
        src, dst = NODE_MODULES / source, VENDOR / target
        if not src.exists():
            raise RuntimeError(f"{src} is missing after npm ci: check book/package.json")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    vendor_stamp.write_text(digest + "\n")


# --------------------------------------------------------------------------- Sphinx extension

def _vendor_assets(app) -> None:
    """builder-inited: make sure the vendored scripts exist before Sphinx copies _static."""
    try:
        ensure_vendor()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        from sphinx.errors import ExtensionError

        raise ExtensionError(str(exc)) from exc


_MERMAID_IMPORT = re.compile(r"^import mermaid from [^;\n]+;", re.MULTILINE)


def _mermaid_classic_script(app, pagename, templatename, context, doctree) -> None:
    """html-page-context: swap sphinxcontrib-mermaid's ES-module import for the UMD build.

    Browsers block module imports from file:// pages; a classic <script> works everywhere.
    Pages without a doctree (search, genindex) get no Mermaid at all.
    """
    from sphinx.builders.html._assets import _JavaScript

    scripts = context.get("script_files", [])
    for i, js in enumerate(scripts):
        body = js.attributes.get("body", "") if isinstance(js, _JavaScript) else ""
        if not _MERMAID_IMPORT.search(body):
            continue
        if doctree is None:
            del scripts[i]
            break
        new_body = _MERMAID_IMPORT.sub("const mermaid = globalThis.mermaid;", body, count=1)
        scripts[i] = _JavaScript(js.filename, priority=js.priority, **{**js.attributes, "body": new_body})
        app.add_js_file(MERMAID_JS, priority=js.priority - 1, loading_method="defer")
        break


# myst-nb fills "{type}" in the toggle prompts of hidden cells with an English word.
_PROMPT = re.compile(r"^(显示|隐藏)(source|outputs?|content)$")
_PROMPT_WORDS = {"source": "代码", "output": "输出", "outputs": "输出", "content": "单元格"}


def _fold_solutions(doctree) -> None:
    """Cells tagged `solution` and hidden fold input and output together, labelled 参考答案."""
    from docutils import nodes

    for cell in doctree.findall(nodes.container):
        tags = cell.get("cell_metadata", {}).get("tags", [])
        if cell.get("nb_element") == "cell_code" and cell.get("hide_mode") and "solution" in tags:
            cell["hide_mode"] = "all"
            cell["prompt_show"], cell["prompt_hide"] = "显示参考答案", "隐藏参考答案"


def _chinese_cell_prompts(app, doctree, docname) -> None:
    """doctree-resolved: translate the English word myst-nb put into the toggle prompts."""
    try:
        from myst_nb.sphinx_ import HideCodeCellNode
    except ImportError:
        return
    for node in doctree.findall(HideCodeCellNode):
        for key in ("prompt_show", "prompt_hide"):
            match = _PROMPT.match(node.get(key, ""))
            if match:
                node[key] = match[1] + _PROMPT_WORDS[match[2]]


# sphinx-book-theme's zh_CN catalogue has one Traditional-Chinese wording; the book is Simplified.
_THEME_WORDING = {"Print to PDF": "打印为 PDF"}


def _simplified_theme_wording(app) -> None:
    """builder-inited: correct the theme's zh_CN messages in its loaded catalogue."""
    from sphinx import locale

    translator = locale.translators.get(("general", "booktheme"))
    catalog = getattr(translator, "_catalog", None)
    if app.config.language == "zh_CN" and isinstance(catalog, dict):
        catalog.update(_THEME_WORDING)


def _root_redirect(app, exception) -> None:
    """build-finished: the site root's index.html, a full page that leads to the first page.

    sphinx-external-toc would write a bare <meta> redirect; a page without an icon of its own makes
    the browser ask the server for /favicon.ico (a 404 in the console), so ours names the book's icon.
    """
    if exception is not None or app.builder.name != "html" or app.config.root_doc == "index":
        return
    target = f"{app.config.root_doc}.html"
    icon = f"_static/{Path(app.config.html_favicon).name}" if app.config.html_favicon else ""
    head = f'<link rel="icon" href="{icon}">' if icon else ""
    page = (f'<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            f'<meta http-equiv="Refresh" content="0; url={target}">{head}<title>{app.config.project}</title>'
            f'</head><body><a href="{target}">{target}</a></body></html>\n')
    (Path(app.outdir) / "index.html").write_text(page, encoding="utf-8")


def setup(app) -> dict:
    """Register the extension: vendored scripts, offline Mermaid loader, Chinese cell toggles."""
    from sphinx.transforms.post_transforms import SphinxPostTransform

    class FoldSolutions(SphinxPostTransform):
        default_priority = 198  # just before myst-nb's HideInputCells (199) wraps the cells
        formats = ("html",)

        def run(self, **kwargs) -> None:
            _fold_solutions(self.document)

    app.add_post_transform(FoldSolutions)
    app.connect("builder-inited", _vendor_assets)
    app.connect("builder-inited", _simplified_theme_wording)
    app.connect("html-page-context", _mermaid_classic_script, priority=900)
    app.connect("doctree-resolved", _chinese_cell_prompts)
    app.connect("build-finished", _root_redirect, priority=400)  # before sphinx-external-toc's bare one
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


# --------------------------------------------------------------------------- command line

def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def build(out: Path, execute: bool, builder: str = "html") -> int:
    """Build the book with a Sphinx HTML builder into out/<builder>; return Sphinx's exit status."""
    from jupyter_book.sphinx import build_sphinx
    from sphinx.util.console import color_terminal, nocolor

    if not color_terminal():
        nocolor()  # plain logs when piped (make, CI, tests)
    overrides: dict = {"external_toc_path": TOC.as_posix(), "latex_individualpages": False}
    if execute:
        profile = os.environ.setdefault("BIGMODEL_PROFILE", "full")
        overrides["nb_execution_mode"] = "cache"
        # One cache per profile: the cache key is the code, which the profile does not change.
        overrides["nb_execution_cache_path"] = str(out / ".jupyter_cache" / profile)
        print(f"Executing notebooks with BIGMODEL_PROFILE={profile} (cached)", flush=True)
    result = build_sphinx(
        ROOT,
        out / builder,
        doctreedir=out / ".doctrees",
        noconfig=True,
        path_config=str(CONFIG),
        confoverrides=overrides,
        builder=builder,  # "singlehtml" for the PDF edition (book/tools/make_pdf.py)
        warningiserror=True,
        keep_going=True,
        freshenv=True,  # re-read every page so each build reports every warning
    )
    return result if isinstance(result, int) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execute", action="store_true",
                        help="re-execute the notebooks (cached; BIGMODEL_PROFILE=ci|full, default full)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="build folder; the HTML goes to OUT/html (default: book/_build)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    profile = os.environ.get("BIGMODEL_PROFILE", "full")
    if args.execute and profile not in ("ci", "full"):
        parser.error(f"BIGMODEL_PROFILE must be 'ci' or 'full', got {profile!r}")

    start = time.perf_counter()
    try:
        ensure_vendor()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = build(out, args.execute)
    elapsed = time.perf_counter() - start
    index = out / "html" / "index.html"
    if status != 0 or not index.is_file():
        print(f"Book build FAILED after {elapsed:.0f} s (warnings count as errors; see above)", file=sys.stderr)
        return status or 1
    print(f"Book built in {elapsed:.0f} s")
    print(f"Open {_display(index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
