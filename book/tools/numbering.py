"""Sphinx extension: captioned figures from notebook outputs, and chapter-based figure and equation numbers.

Numbers read "图 2.3" and "(2.3)": the chapter (from the `chNN_` file name) and a counter that runs
on through the chapter's section notebooks in reading order, as in a printed book. Sphinx alone
would restart at 1 on every page unless the table of contents were numbered, which would print a
second number before every "第N章" title.

A code cell lists its figures in its metadata, one entry per image output, in order:

    "metadata": {"figures": [{"name": "fig-ch01-weights", "caption": "注意力权重……"}]}

Each image output becomes a numbered figure with that caption and label, referenced from the prose
as {numref}`fig-ch01-weights`. MyST-NB's own `mystnb.figure` option wraps every display output of
a cell (tables included) under one label, which breaks cells that show a table and a plot; cell
metadata survives re-running a notebook, unlike output metadata. A cell whose image outputs and
entries differ in number is a build error.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)
META_KEY = "figures"
CHAPTER = re.compile(r"(?:^|/)ch(\d+)_")


def _is_image_bundle(node: nodes.Node) -> bool:
    return (isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"
            and any(str(child.get("mime_type", "")).startswith("image/") for child in node.children))


class NotebookFigures(SphinxTransform):
    """Wrap each image output of a cell with `figures` metadata in a captioned, labelled figure."""

    default_priority = 400  # before Sphinx collects labels and figure numbers

    def apply(self, **kwargs) -> None:
        for cell in list(self.document.findall(nodes.container)):
            if cell.get("nb_element") != "cell_code":
                continue
            entries = (cell.get("cell_metadata") or {}).get(META_KEY)
            if not entries:
                continue
            bundles = [b for b in cell.findall(nodes.container) if _is_image_bundle(b)]
            if len(bundles) != len(entries):
                logger.warning("cell %s lists %d figures but outputs %d images", cell.get("cell_index"),
                               len(entries), len(bundles), location=cell)
                continue
            for bundle, entry in zip(bundles, entries):
                name, text = entry.get("name", ""), entry.get("caption", "")
                if not name or not text:
                    logger.warning("cell %s: a figure needs both a name and a caption", cell.get("cell_index"),
                                   location=cell)
                    continue
                figure = nodes.figure(classes=["notebook-figure"])
                figure.source, figure.line = bundle.source, bundle.line
                bundle.replace_self(figure)
                figure += bundle
                figure += nodes.caption(text, text)
                figure["names"].append(nodes.fully_normalize_name(name))
                self.document.note_explicit_target(figure, figure)


def _reading_order(env) -> list[str]:
    """Every document reachable from the root's table of contents, depth first."""
    order: list[str] = []

    def walk(doc: str) -> None:
        if doc in order:
            return
        order.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(env.config.root_doc)
    return order


def chapter_numbers(app, env) -> list[str]:
    """Renumber figures, tables and equations as (chapter, n), counting through each chapter's pages."""
    counters: dict[tuple[int, str], int] = {}
    for doc in _reading_order(env):
        match = CHAPTER.search(doc)
        if not match or doc not in env.toc_fignumbers:
            continue
        chapter = int(match.group(1))
        for figtype, numbers in env.toc_fignumbers[doc].items():
            for node_id in sorted(numbers, key=numbers.get):  # the page's own order
                counters[chapter, figtype] = counters.get((chapter, figtype), 0) + 1
                numbers[node_id] = (chapter, counters[chapter, figtype])
    return []


def setup(app) -> dict:
    app.add_transform(NotebookFigures)
    app.connect("env-get-updated", chapter_numbers, priority=900)  # after Sphinx assigned its numbers
    return {"parallel_read_safe": True, "parallel_write_safe": True}
