"""Sphinx extension: test markers such as `# NBVAL_CHECK_OUTPUT` are not printed in the book.

nbval (tests/test_notebooks.py) re-runs the code cells that begin with `# NBVAL_CHECK_OUTPUT` and
compares their outputs with the stored ones; the comment is for the tests, not for the reader. This
transform removes every line that holds only such a marker (`# NBVAL_` and a word) from the code
shown for notebook code cells, so neither the HTML nor the PDF shows it. The notebooks keep it.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.transforms import SphinxTransform

MARKER = re.compile(r"^\s*#\s*NBVAL_\w+\s*$")


def strip_markers(code: str) -> str:
    """code without its marker-only lines."""
    return "\n".join(line for line in code.split("\n") if not MARKER.match(line))


class StripNbvalMarkers(SphinxTransform):
    """Drop `# NBVAL_…` lines from the literal blocks of notebook code-cell sources."""

    default_priority = 400

    def apply(self, **kwargs) -> None:
        for source in self.document.findall(nodes.container):
            if source.get("nb_element") != "cell_code_source":
                continue
            for block in list(source.findall(nodes.literal_block)):
                text = block.astext()
                new = strip_markers(text)
                if new == text:
                    continue
                if not all(isinstance(child, nodes.Text) for child in block.children):
                    continue  # highlighted children: leave the block as it is
                block[:] = [nodes.Text(new)]
                block.rawsource = new


def setup(app) -> dict:
    app.add_transform(StripNbvalMarkers)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
