"""Documents to retrieve from: the book's own pages split at Markdown headings, and People's Daily passages.

A `Document` is one retrievable unit with enough information to cite it: for a book section, `source` is the page
path without extension (``chapters/ch05_compression``) and `anchor` the HTML fragment, so `Document.url` is the link
``chapters/ch05_compression.html#ch05-pruning`` in the built book.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import bigmodel_course

SKIPPED_BOOK_PAGES = frozenset({"references.md", "workshop_timings.md"})
PEOPLES_DAILY_SOURCE = "peoples_daily_199801"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LABEL = re.compile(r"^\(([^()\s]+)\)=\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})\s*(.*)$")
_DIRECTIVE = re.compile(r"^\{([\w:-]+)\}\s*(.*)$")
_OPTION = re.compile(r"^\s*:[\w-]+:")
_ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*)`")
_ROLE_TITLE = re.compile(r"^(.*?)\s*<[^<>]+>$", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)")
_FILE_ARGUMENT = re.compile(r"\.\w{2,5}$")


@dataclass(frozen=True)
class Document:
    """One retrievable text: `doc_id` is unique in a corpus, `anchor` is an HTML fragment or ''."""

    doc_id: str
    title: str
    text: str
    source: str
    anchor: str

    @property
    def page(self) -> str:
        """The page name, e.g. ``ch05_compression`` (the last part of `source`)."""
        return self.source.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        """Link relative to the book's HTML root; '' for documents that are not book pages."""
        return book_url(self.source, self.anchor)


def book_url(source: str, anchor: str = "") -> str:
    """``<source>.html#<anchor>`` for a book page (``chapters/...`` or ``book/...``), otherwise ''."""
    if not source.startswith(("chapters/", "book/")):
        return ""
    return f"{source}.html" + (f"#{anchor}" if anchor else "")


def default_root() -> Path:
    """The repository this package lives in (the folder above the `bigmodel_course` package)."""
    return Path(bigmodel_course.__file__).resolve().parents[1]


_SECTION_NUMBER = re.compile(r"^(?:第\d+章|\d+(?:\.\d+)+)\s+")


def heading_slug(heading: str) -> str:
    """A readable key for a heading: its section number ("1.6.2 ", "第3章 ") dropped, so renumbering keeps the
    key; lower case, letters/digits (any script) kept, runs of others -> '-'."""
    text = unicodedata.normalize("NFKC", _SECTION_NUMBER.sub("", heading)).lower()
    return re.sub(r"[^\w]+", "-", text).strip("-_")


def sphinx_id(heading: str) -> str:
    """The HTML id Sphinx gives an unlabelled heading (docutils' make_id): ASCII only, '' when nothing is left."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text)
    return re.sub(r"^[^a-z]+|-+$", "", text)


def clean_markdown(text: str) -> str:
    """Readable text from MyST Markdown: fence lines, directive options, labels and comments dropped,
    ``{role}`target``` reduced to its text (the title of ``title <target>``; citations dropped), emphasis markers
    removed."""
    lines = []
    after_directive = False
    for line in _COMMENT.sub("", text).splitlines():
        fence = _FENCE.match(line)
        if fence:
            directive = _DIRECTIVE.match(fence.group(2))
            argument = directive.group(2).strip() if directive else ""
            if argument and not _FILE_ARGUMENT.search(argument):
                lines.append(argument)  # e.g. an admonition's title
            after_directive = directive is not None
            continue
        if after_directive and _OPTION.match(line):
            continue
        after_directive = False
        if _LABEL.match(line.strip()):
            continue
        lines.append(line)
    out = _ROLE.sub(_role_text, "\n".join(lines))
    out = _EMPHASIS.sub("", out)
    out = re.sub(r"[ \t]+\n", "\n", out)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _role_text(match: re.Match) -> str:
    if match.group(1) == "cite":
        return ""  # a bibliography key reads as noise in quoted text
    content = match.group(2).strip()
    titled = _ROLE_TITLE.match(content)
    return titled.group(1) if titled and titled.group(1) else content


def _notebook_markdown(path: Path) -> str:
    """The markdown cells of a notebook joined by blank lines (code cells skipped)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a valid notebook (JSON error: {err})") from err
    cells = nb.get("cells", [])
    return "\n\n".join(
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in cells if c.get("cell_type") == "markdown"
    )


def split_sections(markdown: str, source: str) -> list[Document]:
    """Split one page's Markdown at its headings (fenced blocks are not searched for headings).

    Each section's `doc_id` is ``<page>#<key>`` with key = the MyST label right before the heading, or else
    `heading_slug` of the heading. `anchor` is the label, or else the Sphinx id of the heading when it is non-empty
    and not used by an earlier heading or label on the page, or else the anchor of the nearest enclosing section
    ('' = top of the page). Text before the first heading is kept under the page name, without an anchor; sections
    with no text of their own are dropped.
    """
    page = source.rsplit("/", 1)[-1]
    raw: list[tuple[int, str, str, list[str]]] = []  # (level, heading, label, body lines)
    current: list[str] = []
    raw.append((0, page, "", current))
    pending_label = ""
    fence = ""
    for line in markdown.splitlines():
        stripped = line.strip()
        opener = _FENCE.match(line)
        if fence:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence) and not opener.group(2):
                fence = ""
            current.append(line)
            continue
        if opener:
            fence = opener.group(1)
            current.append(line)
            continue
        label = _LABEL.match(stripped)
        if label:
            pending_label = label.group(1)
            continue
        heading = _HEADING.match(line)
        if heading:
            title = clean_markdown(heading.group(2))
            current = []
            raw.append((len(heading.group(1)), title, pending_label, current))
            pending_label = ""
            continue
        if stripped and pending_label:
            current.append(f"({pending_label})=")  # a label before a figure or equation, not a heading
            pending_label = ""
        current.append(line)

    taken = {label for _, _, label, _ in raw if label}  # docutils gives a repeated id to its first heading only
    docs: list[Document] = []
    keys: set[str] = set()
    stack: list[tuple[int, str]] = []  # (level, anchor) of enclosing sections
    for level, title, label, body in raw:
        while stack and stack[-1][0] >= level:
            stack.pop()
        sid = sphinx_id(title) if level and not label else ""
        if label:
            anchor = label
        elif sid and sid not in taken:
            anchor = sid
        else:
            anchor = stack[-1][1] if stack else ""
        taken.add(sid)
        stack.append((level, anchor))
        text = clean_markdown("\n".join(body))
        if not text:
            continue
        key = label or heading_slug(title) or f"section-{len(docs) + 1}"
        if key in keys:
            n = 2
            while f"{key}-{n}" in keys:
                n += 1
            key = f"{key}-{n}"
        keys.add(key)
        docs.append(Document(doc_id=f"{page}#{key}", title=title, text=text, source=source, anchor=anchor))
    return docs


def load_book_sections(root: str | Path | None = None) -> list[Document]:
    """Sections of the book: markdown cells of ``chapters/*.ipynb`` then ``book/*.md`` (without the reference
    list and the workshop timing table), each split at its headings by `split_sections`, in file-name order."""
    root = default_root() if root is None else Path(root)
    chapters = root / "chapters"
    if not chapters.is_dir():
        raise ValueError(f"{root} has no chapters/ folder: pass the root of the book's repository")
    docs: list[Document] = []
    for path in sorted(chapters.glob("*.ipynb")):
        docs += split_sections(_notebook_markdown(path), f"chapters/{path.stem}")
    for path in sorted((root / "book").glob("*.md")):
        if path.name not in SKIPPED_BOOK_PAGES:
            docs += split_sections(path.read_text(encoding="utf-8"), f"book/{path.stem}")
    if not docs:
        raise ValueError(f"no Markdown sections found under {chapters}")
    return docs


def load_peoples_daily_documents(paragraphs_per_doc: int = 10) -> list[Document]:
    """People's Daily (Jan 1998) as documents of `paragraphs_per_doc` consecutive lines.

    `bigmodel_course.data.load_peoples_daily` returns one string per line of the tagged file; the lines are
    paragraphs (headlines, bylines, body paragraphs) and the file carries no article ids or blank lines between
    articles, so articles cannot be recovered reliably. We therefore group fixed windows of consecutive paragraphs
    (the last one may be shorter); a window may span two articles. The title is the window's first line.
    """
    from bigmodel_course.data import load_peoples_daily

    if isinstance(paragraphs_per_doc, bool) or not isinstance(paragraphs_per_doc, int) or paragraphs_per_doc < 1:
        raise ValueError(f"paragraphs_per_doc must be a positive int, got {paragraphs_per_doc!r}")
    lines = load_peoples_daily()
    docs = []
    for n, start in enumerate(range(0, len(lines), paragraphs_per_doc)):
        window = lines[start:start + paragraphs_per_doc]
        docs.append(Document(doc_id=f"pd-{n:05d}", title=window[0][:40], text="\n".join(window),
                             source=PEOPLES_DAILY_SOURCE, anchor=""))
    return docs
