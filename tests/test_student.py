"""make student: solutions removed, outputs cleared, exercises kept, and the student notebooks still run (ci)."""

import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import make_student
import nbtools

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOKS = nbtools.chapter_notebooks()
IDS = [p.stem for p in NOTEBOOKS]


def _tags(cell) -> list:
    return cell.metadata.get("tags", [])


def _exercises(nb) -> list[str]:
    """The 练习 heading line and the numbered questions below it, read independently of make_student."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (m := re.search(r"^#+\s*练习\s*$", cell.source, re.MULTILINE)):
            rest = cell.source[m.end():]
            return [m.group(0)] + re.findall(r"^\d+\.\s.*$", rest, re.MULTILINE)
    return []


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout") / "student"
    assert make_student.main(["--out", str(out)]) == 0
    return out


def test_student_folder_has_every_chapter_and_a_readme(student_dir):
    assert NOTEBOOKS
    assert sorted(p.name for p in student_dir.glob("*.ipynb")) == sorted(p.name for p in NOTEBOOKS)
    readme = (student_dir / "README.md").read_text(encoding="utf-8")
    assert "pip install -e" in readme and "make venv" in readme and "BIGMODEL_PROFILE=ci" in readme
    for path in NOTEBOOKS:
        assert f"`{path.name}`" in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_notebook_has_no_solution_and_no_output(path, student_dir):
    source = nbformat.read(str(path), as_version=4)
    student = nbformat.read(str(student_dir / path.name), as_version=4)
    assert not [c for c in student.cells if "solution" in _tags(c)]
    text = "\n".join(c.source for c in student.cells)
    assert "参考答案" not in text
    assert not re.search(r"\{(dropdown|toggle|solution)\}|:class:\s*dropdown|<details", text)
    sources = {c.source.strip() for c in student.cells}
    for cell in source.cells:  # no solution cell survives, and no line of a written answer
        if "solution" in _tags(cell):
            assert cell.source.strip() not in sources
            for line in cell.source.splitlines() if cell.cell_type == "markdown" else []:
                if len(line.strip()) >= 25:
                    assert line.strip() not in text, f"solution text survived: {line.strip()[:60]}"
    code = [c for c in student.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert nbtools.META_KEY not in student.metadata and "papermill" not in student.metadata
    assert not [c for c in student.cells if {"papermill", "execution"} & set(c.metadata)]
    assert "parameters" in _tags(code[0])
    assert code[0].source == next(c for c in source.cells if c.cell_type == "code").source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_notebook_keeps_exercises_and_every_other_cell(path, student_dir):
    source = nbformat.read(str(path), as_version=4)
    student = nbformat.read(str(student_dir / path.name), as_version=4)
    exercises = _exercises(source)
    assert len(exercises) >= 2, f"{path.name}: no 练习 heading with numbered questions"
    assert _exercises(student) == exercises
    kept = [c for c in source.cells if "solution" not in _tags(c)]
    assert len(student.cells) == len(kept)
    for before, after in zip(kept, student.cells):
        assert after.cell_type == before.cell_type
        if before.cell_type == "code" or "参考答案" not in before.source:
            assert after.source == before.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_notebook_executes_with_papermill_ci_profile(path, student_dir, tmp_path):
    # Run in the student folder, as a student would; the same helper as tests/test_notebooks.py.
    nb = nbtools.execute(student_dir / path.name, "ci", tmp_path / path.name, timeout=600)
    injected = [c for c in nb.cells if "injected-parameters" in _tags(c)]
    assert injected and 'PROFILE = "ci"' in injected[0].source
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.execution_count is not None for c in code), f"{path.name}: not every cell ran"


# --- the remover on a small synthetic notebook -------------------------------------------------

def _synthetic():
    nb = new_notebook()
    nb.metadata[nbtools.META_KEY] = {"code_sha256": "x", "profile": "full"}
    nb.metadata["papermill"] = {"duration": 1.0}
    params = new_code_cell('PROFILE = os.environ.get("BIGMODEL_PROFILE", "full")', metadata={"tags": ["parameters"]})
    work = new_code_cell("print(1)", execution_count=2, outputs=[new_output("stream", name="stdout", text="1\n")])
    work.metadata["papermill"] = {"duration": 0.1}
    work.metadata["execution"] = {"iopub.status.idle": "now"}
    nb.cells = [
        new_markdown_cell("# 第0章 测试\n\n```{dropdown} 推导细节\n与答案无关的展开内容。\n```"),
        params,
        work,
        new_markdown_cell(
            "## 小结\n\n- 一条要点。\n\n## 练习\n\n1. **问题一** 算一算。\n2. **问题二** 想一想。\n\n"
            "::::{dropdown} 参考答案（练习 2）\n解释文字。\n\n```python\nprint('answer')\n```\n\n"
            ":::{note}\n嵌套的说明。\n:::\n::::\n\n"
            "<details><summary><b>参考答案</b>（练习 1）</summary>\n四十二。\n</details>\n\n结尾的一句话。"
        ),
        new_code_cell("# 练习 1 参考答案\nprint(42)", metadata={"tags": ["solution", "hide-input"]},
                      execution_count=3, outputs=[new_output("stream", name="stdout", text="42\n")]),
        new_markdown_cell(":::{admonition} 参考答案（练习 2）\n:class: dropdown\n因为……\n:::",
                          metadata={"tags": ["solution"]}),
        new_markdown_cell("```{admonition} 参考答案\n只有答案的单元。\n```"),
    ]
    return nb


def test_remover_drops_solution_cells_and_answer_blocks_and_clears_outputs():
    student, removed = make_student.student_notebook(_synthetic(), "synthetic.ipynb")
    assert removed == make_student.Removed(cells=3, blocks=3)
    assert [c.cell_type for c in student.cells] == ["markdown", "code", "code", "markdown"]
    # not an answer: kept
    assert student.cells[0].source.endswith("```{dropdown} 推导细节\n与答案无关的展开内容。\n```")
    exercises = student.cells[3].source
    assert "1. **问题一** 算一算。\n2. **问题二** 想一想。" in exercises and exercises.endswith("结尾的一句话。")
    for gone in ("参考答案", "解释文字", "嵌套的说明", "answer", "四十二", "::::", "<details"):
        assert gone not in exercises
    assert student.cells[2].outputs == [] and student.cells[2].execution_count is None
    assert not {"papermill", "execution"} & set(student.cells[2].metadata)
    assert nbtools.META_KEY not in student.metadata and "papermill" not in student.metadata
    assert "parameters" in student.cells[1].metadata["tags"]


def test_strip_solution_blocks_keeps_fences_inside_code_blocks_literal():
    text = "前文\n````markdown\n```{dropdown} 参考答案\n```\n````\n后文"
    # the answer-looking fence is only an example inside a literal code block, so nothing is cut ...
    assert make_student.strip_solution_blocks(text) == (text, 0)
    # ... but such a leftover 参考答案 still stops the build
    nb = new_notebook(cells=[new_markdown_cell(text)])
    with pytest.raises(make_student.SolutionMarkerError, match="cell 0"):
        make_student.student_notebook(nb, "literal.ipynb")


@pytest.mark.parametrize("cell", [
    new_code_cell("# 练习 1 参考答案\nprint(42)"),                           # answer code without the tag
    new_code_cell("# Solution to exercise 1\nprint(42)"),
    new_markdown_cell("**答案**：42"),
    new_markdown_cell("参考答案见下。"),
    new_markdown_cell("1. 问题一（答案：42）"),
    new_markdown_cell("<details><summary>提示</summary>先算分母。</details>"),
    new_markdown_cell(":::{admonition} 练习 1\n:class: dropdown\n42\n:::"),
    new_code_cell("print(42)", metadata={"tags": ["solutions"]}),
    new_code_cell("print(42)", metadata={"solution2": "hidden"}),
], ids=["untagged-code", "solution-comment", "bold-answer", "word", "inline", "details", "dropdown", "tag",
        "exercise2-meta"])
def test_unknown_solution_marker_fails_naming_notebook_and_cell(cell):
    nb = new_notebook(cells=[new_markdown_cell("## 练习\n\n1. 问题一"), cell])
    with pytest.raises(make_student.SolutionMarkerError, match=r"odd\.ipynb: .*\n  cell 1 "):
        make_student.student_notebook(nb, "odd.ipynb")


def test_cli_reports_an_unknown_marker_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "ch99_bad.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("## 练习\n\n1. 问题\n\n**答案**：42")]), str(bad))
    out = tmp_path / "out"
    assert make_student.main([str(bad), "--out", str(out)]) == 1
    assert "ch99_bad.ipynb" in capsys.readouterr().err
    assert not out.exists()


def test_output_folder_is_replaced_but_a_foreign_folder_is_refused(tmp_path):
    good = tmp_path / "ch99_good.ipynb"
    nbformat.write(_synthetic(), str(good))
    out = tmp_path / "out"
    make_student.write_student_folder(out, [good])
    (out / "stale.ipynb").write_text("{}")
    make_student.write_student_folder(out, [good])
    assert sorted(p.name for p in out.iterdir()) == [make_student.MARKER_FILE, "README.md", "ch99_good.ipynb"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a student folder"):
        make_student.write_student_folder(foreign, [good])
    assert (foreign / "notes.txt").read_text() == "mine"


def test_make_student_target_passes_out():
    dry = subprocess.run(["make", "-n", "student", "OUT=/tmp/x y", "STAMP="], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert 'book/tools/make_student.py --out "/tmp/x y"' in dry.stdout
