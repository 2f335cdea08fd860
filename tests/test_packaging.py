"""The install is reproducible: pyproject.toml and environment.yml pin the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def pins(requirements: list[str], where: str) -> dict[str, str]:
    out = {}
    for req in requirements:
        match = PIN.match(req.strip())
        assert match, f"{where}: {req!r} is not pinned with =="
        out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def test_pyproject_and_environment_pin_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    ours = pins(reqs, "pyproject.toml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = pins([r for r in pip_section if not r.startswith("-e")], "environment.yml")
    assert conda == ours
    assert "python=3.11" in env["dependencies"]
    assert project["requires-python"].startswith(">=3.11")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    first_block = readme.split("```")[1]  # the README shows the two commands first
    assert "make test" in first_block and "make book" in first_block
