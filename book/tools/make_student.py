"""Student notebooks: every chapter notebook without exercise solutions and outputs (make student).

Solutions are recognised in the forms the chapters use:

- cells tagged ``solution`` (code cells, usually also ``hide-input``; markdown cells holding a
  ``:::{admonition} 参考答案（练习 N）`` dropdown) are dropped;
- MyST directive blocks (``:::`` or backtick fences) titled 参考答案 / 答案 / 解答 / Solution /
  Answer, or named ``{solution}``, and HTML ``<details>`` blocks whose summary says so, are cut out
  of the remaining markdown cells (for example an answer dropdown inside the 练习 cell).

Anything else that looks like a solution (the word 参考答案 left over, a solution-like tag or
metadata key, a collapsible block in the exercises, a code cell opening with an answer comment)
stops the build with an error naming the notebook and the cell instead of shipping a solution.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

import nbtools

SOLUTION_TAG = "solution"
MARKER_FILE = ".bigmodel-student"
DEFAULT_OUT = nbtools.ROOT / "build" / "student"
TOC = nbtools.ROOT / "book" / "_toc.yml"

# A directive title that announces an answer: 参考答案（练习 3）, 答案, 解答, Solution 2, Answers ...
SOLUTION_TITLE = re.compile(r"参考答案|参考解答|^\s*(答案|解答|解析)|^\s*(solutions?|answers?)\b", re.IGNORECASE)
SOLUTION_DIRECTIVES = {"solution", "solution-start", "solution-end"}
FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|:{3,})[ \t]*(?P<info>.*?)[ \t]*$")
DIRECTIVE = re.compile(r"^\{(?P<name>[\w:.-]+)\}\s*(?P<title>.*)$")
DETAILS = re.compile(r"<details\b.*?</details\s*>", re.IGNORECASE | re.DOTALL)
SUMMARY = re.compile(r"<summary\b[^>]*>(?P<text>.*?)</summary\s*>", re.IGNORECASE | re.DOTALL)
EXERCISE_HEADING = re.compile(r"^#{1,6}\s*练习\s*$", re.MULTILINE)
EXERCISE_ITEM = re.compile(r"^\s*\d+\.\s+\S.*$", re.MULTILINE)

# Leftovers that mean "a solution in a form this tool does not know".
LEFTOVER_WORDS = re.compile(r"参考答案|参考解答")
LEFTOVER_TAG = re.compile(r"solution|answer|答案|解答", re.IGNORECASE)
LEFTOVER_COLLAPSIBLE = re.compile(r"\{dropdown\}|\{toggle\}|:class:.*\bdropdown\b|<details\b|\{solution", re.IGNORECASE)
LEFTOVER_ANSWER_LINE = re.compile(r"^\s*(#{1,6}\s*|\*\*|__)?\s*(参考)?(答案|解答)", re.MULTILINE)
LEFTOVER_INLINE_ANSWER = re.compile(r"(答案|解答)\s*[:：]")
LEFTOVER_CODE_COMMENT = re.compile(r"^\s*#.*(答案|解答|\bsolutions?\b|\banswers?\b)", re.IGNORECASE)


class SolutionMarkerError(ValueError):
    """A notebook holds a solution marker that the student build does not know how to remove."""


@dataclass(frozen=True)
class Removed:
    """What was taken out of one notebook: whole cells and blocks cut from markdown cells."""

    cells: int
    blocks: int


@dataclass
class _Fence:
    char: str
    length: int
    start: int
    solution: bool
    literal: bool  # a plain code block: fences inside it are text


def _is_solution_directive(info: str) -> bool:
    """True when a fence's info string opens a solution directive (by name or by title)."""
    match = DIRECTIVE.match(info)
    if not match:
        return False
    return match["name"].lower() in SOLUTION_DIRECTIVES or bool(SOLUTION_TITLE.search(match["title"]))


def _solution_fence_lines(lines: list[str]) -> tuple[set[int], int]:
    """Line numbers of the outermost solution directive blocks in `lines`, and how many blocks."""
    drop: set[int] = set()
    stack: list[_Fence] = []
    blocks = 0
    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if not match:
            continue
        char, length, info = match["fence"][0], len(match["fence"]), match["info"]
        top = stack[-1] if stack else None
        if top and not info and char == top.char and length >= top.length:
            stack.pop()
            if top.solution and not any(f.solution for f in stack):
                drop.update(range(top.start, i + 1))
                blocks += 1
        elif top and top.literal:
            continue
        elif info or char == "`":
            is_directive = bool(DIRECTIVE.match(info))
            stack.append(_Fence(char, length, i, _is_solution_directive(info), char == "`" and not is_directive))
    unclosed = [f for f in stack if f.solution]
    if unclosed:  # an unclosed fence runs to the end of the text, as in MyST
        drop.update(range(unclosed[0].start, len(lines)))
        blocks += 1
    return drop, blocks


def strip_solution_blocks(markdown: str) -> tuple[str, int]:
    """Cut solution directive blocks and answer <details> out of markdown; return the text and the count."""
    lines = markdown.split("\n")
    drop, blocks = _solution_fence_lines(lines)
    text = "\n".join(line for i, line in enumerate(lines) if i not in drop)

    def cut(match: re.Match[str]) -> str:
        nonlocal blocks
        summary = SUMMARY.search(match.group(0))
        if summary and SOLUTION_TITLE.search(re.sub(r"<[^>]+>", "", summary["text"]).strip()):
            blocks += 1
            return ""
        return match.group(0)

    text = DETAILS.sub(cut, text)
    if blocks:
        text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text, blocks


def exercise_start(nb: nbformat.NotebookNode) -> int | None:
    """Index of the last markdown cell with a 练习 heading, or None when the notebook has none."""
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and EXERCISE_HEADING.search(c.source)]
    return found[-1] if found else None


def exercise_items(nb: nbformat.NotebookNode) -> list[str]:
    """The numbered exercise questions under the notebook's 练习 heading."""
    start = exercise_start(nb)
    if start is None:
        return []
    text = nb.cells[start].source
    return EXERCISE_ITEM.findall(text[EXERCISE_HEADING.search(text).end():])


def unknown_solution_markers(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(cell index, reason) for every leftover that looks like a solution in a notebook already stripped."""
    problems: list[tuple[int, str]] = []
    start = exercise_start(nb)
    for i, cell in enumerate(nb.cells):
        in_exercises = start is not None and i >= start
        source = cell.source
        tags = cell.metadata.get("tags", [])
        for tag in tags:
            if LEFTOVER_TAG.search(tag):
                problems.append((i, f"tag {tag!r}"))
        for key in cell.metadata:
            if "solution" in key.lower():
                problems.append((i, f"metadata key {key!r}"))
        if match := LEFTOVER_WORDS.search(source):
            problems.append((i, f"the word {match.group(0)!r} outside a recognised solution block"))
        if cell.cell_type == "markdown":
            if match := LEFTOVER_COLLAPSIBLE.search(source):
                if in_exercises or SOLUTION_TITLE.search(source[match.start():].split("\n", 1)[0]):
                    problems.append((i, f"a collapsible block ({match.group(0)!r}) in the exercises"))
            if match := LEFTOVER_ANSWER_LINE.search(source):
                problems.append((i, f"a line starting with {match.group(0).strip()!r}"))
            if in_exercises and (match := LEFTOVER_INLINE_ANSWER.search(source)):
                problems.append((i, f"an inline answer {match.group(0)!r} in the exercises"))
        elif cell.cell_type == "code":
            first = source.lstrip("\n").split("\n", 1)[0]
            if LEFTOVER_CODE_COMMENT.match(first):
                problems.append((i, f"a code cell opening with {first.strip()!r}"))
    return problems


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> tuple[nbformat.NotebookNode, Removed]:
    """A copy of `nb` without solutions, outputs and run metadata; raise SolutionMarkerError on unknown markers."""
    out = copy.deepcopy(nb)
    cells, dropped, blocks = [], 0, 0
    for cell in out.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            dropped += 1
            continue
        if cell.cell_type == "markdown":
            cell.source, n = strip_solution_blocks(cell.source)
            blocks += n
            if n and not cell.source.strip():
                dropped += 1
                continue
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        cells.append(cell)
    out.cells = cells
    for key in (nbtools.META_KEY, "papermill", "widgets"):
        out.metadata.pop(key, None)
    problems = unknown_solution_markers(out)
    if problems:
        where = "\n".join(f"  cell {i} (id {out.cells[i].get('id', '?')}): {why}" for i, why in problems)
        raise SolutionMarkerError(
            f"{name}: possible solution left after removing the known forms (cells tagged {SOLUTION_TAG!r}, "
            f"参考答案 directive blocks); mark it with the {SOLUTION_TAG!r} tag or fix the notebook:\n{where}"
        )
    nbformat.validate(out)
    return out, Removed(cells=dropped, blocks=blocks)


def toc_order(paths: list[Path]) -> list[Path]:
    """`paths` in the order of book/_toc.yml; notebooks missing from it follow, sorted by name."""
    listed = nbtools.toc_files(TOC) if TOC.exists() else []
    rank = {name: i for i, name in enumerate(listed)}
    return sorted(paths, key=lambda p: (rank.get(f"chapters/{p.stem}", len(rank)), p.name))


def _revision() -> str:
    """The repository's short commit id (with '+' when the working tree differs), or '' outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=nbtools.ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "chapters"], cwd=nbtools.ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return rev + ("+" if dirty else "")


def readme(entries: list[tuple[str, str]]) -> str:
    """The README.md of the student folder for (file name, title) pairs."""
    rows = "\n".join(f"| `{name}` | {title} |" for name, title in entries)
    rev = _revision()
    source = f"（由课程仓库的提交 `{rev}` 生成）" if rev else ""
    return f"""# 大模型应用开发 · 学生版笔记本

这里是《大模型应用开发》每一章的笔记本{source}：练习的参考答案已经删去，所有输出都已清空，
请自己从上到下运行。练习在每个笔记本的末尾（“练习”一节）。

## 安装（一次）

笔记本导入配套库 `bigmodel_course`，它和全部依赖都在课程仓库里（老师提供的仓库目录，下面写作 `<课程仓库>`）。
需要 Python 3.11：

```bash
cd <课程仓库>
make venv                                   # 建立 .venv 并按固定版本安装（包括 bigmodel_course）
# 或者在你自己的虚拟环境里：
pip install -e '<课程仓库>[dev]'            # dev 附带 papermill、ipykernel 等运行笔记本的工具
```

用 conda 的同学也可以在仓库里运行 `conda env create -f environment.yml`。安装之后一切都离线运行，
数据和预训练模型随 pip 包安装，或由代码在第一次运行时训练并保存在 `~/.cache/bigmodel_course`。

## 运行

每个笔记本的第一个代码单元读取运行配置 `BIGMODEL_PROFILE`：

- `ci`：很小的数据和模型，每个笔记本在两核笔记本电脑上一分钟之内跑完，适合课堂上先走一遍；
- `full`（默认）：书中的结果，大多数笔记本几分钟；第一次运行时要训练模型的笔记本更久
  （每个笔记本的实测用时见书中的“工作坊教师指南”）。

```bash
export BIGMODEL_PROFILE=ci                  # 先用 ci 配置；去掉这一行就是 full
jupyter lab                                 # 没有的话：pip install jupyterlab；也可以用 VS Code 打开，选 .venv 的内核
# 不打开界面、直接从头运行一个笔记本：
papermill ch01_concepts.ipynb /tmp/out.ipynb -p PROFILE ci
```

## 笔记本（按章节顺序）

| 文件 | 内容 |
|---|---|
{rows}
"""


def write_student_folder(out: Path, notebooks: list[Path]) -> list[tuple[Path, Removed]]:
    """Write the student copies of `notebooks` and a README.md into `out` (replacing an earlier student folder)."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / MARKER_FILE).exists():
        raise FileExistsError(f"{out} exists and is not a student folder made by this tool; choose another OUT")
    if nbtools.CHAPTERS.resolve() in (out, *out.parents):
        raise ValueError(f"refusing to write student notebooks into {out}: it is inside chapters/")
    if not notebooks:
        raise ValueError("no chapter notebooks to convert")
    out.parent.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Removed]] = []
    entries: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / out.name
        staging.mkdir()
        for path in toc_order(notebooks):
            nb, removed = student_notebook(nbformat.read(str(path), as_version=4), path.name)
            nbtools.write_atomic(nb, staging / path.name)
            done.append((out / path.name, removed))
            entries.append((path.name, nbtools.title(nb)))
        (staging / "README.md").write_text(readme(entries), encoding="utf-8")
        (staging / MARKER_FILE).write_text("written by book/tools/make_student.py; safe to delete\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapters/*.ipynb")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"default: {DEFAULT_OUT.relative_to(nbtools.ROOT)}")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or nbtools.chapter_notebooks()
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"no such notebook: {missing[0]}", file=sys.stderr)
        return 2
    try:
        done = write_student_folder(args.out, paths)
    except (SolutionMarkerError, FileExistsError, ValueError) as err:
        print(f"make student: {err}", file=sys.stderr)
        return 1
    for path, removed in done:
        print(f"{path.name}: removed {removed.cells} solution cells and {removed.blocks} blocks in other cells")
    print(f"{len(done)} student notebooks and README.md in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
