"""The workshop guide: its timing table comes from `make timings`, covers every notebook, and backs the prose."""

from __future__ import annotations

import re

import nbformat
import pytest

import nbtools
import time_notebooks
from test_appendices import _normalise, _pyproject_pins

pytestmark = pytest.mark.book

ROOT = nbtools.ROOT
GUIDE = ROOT / "book" / "workshop.md"
ROW = re.compile(r"^\| `(?P<nb>[\w.]+\.ipynb)` \| (?P<title>.+?) \| (?P<ci>[\d.]+)(?P<ci_busy>\\\*)? \| "
                 r"(?P<full>[\d.]+)(?P<full_busy>\\\*)? \| (?P<peak>[\d,]+) \|$", re.MULTILINE)
TOTAL = re.compile(r"^\| \*\*合计\*\* \| \| \*\*(?P<ci>[\d.]+)\*\* \| \*\*(?P<full>[\d.]+)\*\* \| "
                   r"\*\*(?P<peak>[\d,]+)\*\*（最大） \|$", re.MULTILINE)


def table() -> tuple[list[dict], dict]:
    text = time_notebooks.TABLE.read_text(encoding="utf-8")
    assert text.startswith("<!-- Written by `make timings`"), "book/workshop_timings.md must come from make timings"
    rows = [m.groupdict() for m in ROW.finditer(text)]
    total = TOTAL.search(text)
    assert rows and total, "no timing rows or no total row in book/workshop_timings.md"
    return rows, total.groupdict()


def test_the_guide_is_in_the_book_and_includes_the_table():
    files = nbtools.toc_files()
    assert "book/workshop" in files
    assert files.index("book/workshop") > max(i for i, f in enumerate(files) if f.startswith("chapters/"))
    text = GUIDE.read_text(encoding="utf-8")
    assert "```{include} workshop_timings.md" in text
    for heading in ("先修要求", "在学员的电脑上安装", "日程", "运行时间表", "常见问题"):
        assert re.search(rf"^##+ .*{heading}", text, re.MULTILINE), f"workshop.md has no section {heading}"


def test_the_table_lists_every_notebook_in_reading_order():
    rows, _ = table()
    notebooks = time_notebooks.book_notebooks()
    assert [r["nb"] for r in rows] == [p.name for p in notebooks]
    for row, path in zip(rows, notebooks):
        assert row["title"] == nbtools.title(nbformat.read(path, as_version=4)), f"{path.name}: stale title"


def test_totals_add_up():
    rows, total = table()
    for col in ("ci", "full"):
        values = [float(r[col]) for r in rows]
        assert all(v > 0 for v in values)
        assert abs(sum(values) - float(total[col])) <= 0.05 * len(values) + 0.05, f"{col} total"
    assert int(total["peak"].replace(",", "")) == max(int(r["peak"].replace(",", "")) for r in rows)


def test_no_timing_shared_the_machine_with_other_work():
    rows, _ = table()
    busy = [(r["nb"], col) for r in rows for col in ("ci", "full") if r[f"{col}_busy"]]
    assert not busy, f"re-time these on a quiet machine (time_notebooks.py --only ... --profile ...): {busy}"


# Every run-time claim the book makes, with what it promises: (file, words, profile, statistic, at most minutes).
CLAIMS = [
    ("book/intro.md", "`ci` 档位一分钟之内", "ci", "max", 1.0),
    ("book/intro.md", "每个笔记本在两核 CPU 上一分钟之内跑完", "ci", "max", 1.0),
    ("book/intro.md", "整本笔记本一分钟之内跑完", "ci", "max", 1.0),
    ("book/intro.md", "`full` 档位大多几分钟", "full", "median", 5.0),
    ("book/workshop.md", "每个笔记本一两分钟之内就能跑完", "ci", "max", 2.0),
    ("book/tools/make_student.py", "每个笔记本在两核笔记本电脑上一分钟之内跑完", "ci", "max", 1.0),
    ("book/tools/make_student.py", "大多数笔记本几分钟", "full", "median", 5.0),
    ("chapters/ch01_concepts.ipynb", "整本笔记本在两核 CPU 上半分钟之内就能跑完", "full", "ch01_concepts.ipynb", 0.5),
]
CI_SECONDS_CLAIM = re.compile(r"`ci` 配置[^。]{0,80}几十秒内")


def test_the_prose_matches_the_measurements():
    """What the book says about run times is true of the table it includes."""
    rows, _ = table()
    minutes = {col: {r["nb"]: float(r[col]) for r in rows} for col in ("ci", "full")}
    for path, words, col, stat, bound in CLAIMS:
        assert words in (ROOT / path).read_text(encoding="utf-8"), f"{path} no longer says {words!r}: update CLAIMS"
        values = sorted(minutes[col].values())
        got = {"max": values[-1], "median": values[len(values) // 2]}.get(stat) or minutes[col][stat]
        assert got <= bound, f"{path} says {words!r}, but the {stat} {col} run takes {got} min"
    for path in time_notebooks.book_notebooks():  # "the ci profile runs in tens of seconds"
        nb = nbformat.read(path, as_version=4)
        if any(CI_SECONDS_CLAIM.search(c.source) for c in nb.cells if c.cell_type == "markdown"):
            assert minutes["ci"][path.name] < 1.0, f"{path.name} promises a ci run in tens of seconds"


INTRO = ROOT / "book" / "intro.md"
INTRO_ROW = re.compile(r"^\| `(?P<nb>\w+)` \| (?P<full>[\d.]+) \| ", re.MULTILINE)
INTRO_REST = re.compile(r"其余笔记本的 `full` 档位都在 (?P<bound>\d+) 分钟以内")


def test_the_preface_lists_the_longest_notebooks_as_the_table_measured_them():
    """The preface's "how long is the first run" table: the table's longest `full` runs, with their minutes."""
    rows, _ = table()
    text = INTRO.read_text(encoding="utf-8")
    section = text[text.index("(intro-long-runs)="):]
    listed = [(m["nb"], m["full"]) for m in INTRO_ROW.finditer(section)]
    assert listed, "book/intro.md has no table of the longest notebooks"
    longest = sorted(rows, key=lambda r: float(r["full"]), reverse=True)[:len(listed)]
    assert listed == [(r["nb"].removesuffix(".ipynb"), r["full"]) for r in longest], \
        "book/intro.md's longest-notebook table does not match book/workshop_timings.md"
    bound = INTRO_REST.search(section)
    assert bound, "book/intro.md no longer bounds the other notebooks' full runs"
    rest = sorted(rows, key=lambda r: float(r["full"]), reverse=True)[len(listed):]
    assert all(float(r["full"]) < int(bound["bound"]) for r in rest), \
        f"a notebook the preface does not list takes {bound['bound']} min or more"


def test_the_longest_and_largest_notebooks_are_the_ones_the_guide_names():
    rows, _ = table()
    text = GUIDE.read_text(encoding="utf-8")
    longest = sorted(rows, key=lambda r: float(r["full"]))[-2:]
    assert {r["nb"] for r in longest} == {"ch06_assistant.ipynb", "ch07_rag_agents.ipynb"}
    assert "用时最长的两个笔记本是 `ch06_assistant` 和 `ch07_rag_agents`" in text
    largest = max(rows, key=lambda r: int(r["peak"].replace(",", "")))
    assert largest["nb"] == "ch05_compute.ipynb" and "峰值最大的是 `ch05_compute`" in text
    assert int(largest["peak"].replace(",", "")) > 6 * 1024, "the guide warns 8 GB laptops about it"


def test_quoted_versions_equal_the_pins():
    pins = _pyproject_pins()
    quoted = re.findall(r"\b([A-Za-z][\w.-]*)==(\d[\w.]*)", GUIDE.read_text(encoding="utf-8"))
    assert quoted
    for name, version in quoted:
        assert pins.get(_normalise(name)) == version, (
            f"workshop.md quotes {name}=={version}, pyproject pins {pins.get(_normalise(name))}")


def test_render_formats_minutes_and_totals():
    rows = [{"notebook": "a.ipynb", "title": "甲", "ci": {"seconds": 12.0, "peak_mib": 900},
             "full": {"seconds": 600.0, "peak_mib": 2048}},
            {"notebook": "b.ipynb", "title": "乙", "ci": {"seconds": 90.0, "peak_mib": 1000},
             "full": {"seconds": 30.0, "peak_mib": 1500}}]
    info = {"cpus": 2, "torch": "2.14.1", "torch_threads": 2, "memory_gib": 24, "python": "3.11.7",
            "processor": "x86_64", "date": "2026-12-02"}
    text = time_notebooks.render(rows, info)
    assert "| `a.ipynb` | 甲 | 0.20 | 10.0 | 2,048 |" in text
    assert "| `b.ipynb` | 乙 | 1.5 | 0.50 | 1,500 |" in text
    assert "| **合计** | | **1.7** | **10.5** | **2,048**（最大） |" in text
    assert ROW.search(text) and TOTAL.search(text) and "\\*" not in text
    rows[1]["full"]["other_cpu_s"] = 20.0  # a run that shared the CPUs is marked
    marked = time_notebooks.render(rows, info)
    assert "| `b.ipynb` | 乙 | 1.5 | 0.50\\* | 1,500 |" in marked and ROW.search(marked)["nb"] == "a.ipynb"
    assert [m["full_busy"] for m in ROW.finditer(marked)] == [None, "\\*"]


def test_prime_entries_must_exist_in_the_live_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    (tmp_path / "sentiment" / "gpt-full").mkdir(parents=True)
    assert time_notebooks.prime_sources(["sentiment/gpt-full"], {"ch05_compute.ipynb"}) == {
        "sentiment/gpt-full": tmp_path / "sentiment" / "gpt-full"}
    assert time_notebooks.prime_sources([], set()) == {}
    for entry in ("sentiment/gpt-ci", "../sentiment/gpt-full"):
        with pytest.raises(SystemExit, match="no such entry"):
            time_notebooks.prime_sources([entry], {"ch05_compute.ipynb"})
    with pytest.raises(SystemExit, match="only applies"):
        time_notebooks.prime_sources(["sentiment/gpt-full"], set())


def test_a_notebook_without_a_title_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("没有标题"), nbformat.v4.new_code_cell("1")])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(ValueError, match="no level-1 heading"):
        time_notebooks.title(path)
