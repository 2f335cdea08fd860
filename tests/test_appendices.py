"""The appendices and the bibliography: pinned versions quoted correctly, every citation and link resolves."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
APPENDICES = sorted(BOOK.glob("appendix_*.md"))
BIB = BOOK / "references.bib"

# The keys the chapters may cite (the list the book's authors agreed on); the .bib holds exactly these.
BIB_KEYS = {
    "sohl2015deep", "ho2020denoising", "nichol2021improved", "ho2022classifier", "lugmayr2022repaint",
    "dettmers2022llmint8", "xiao2023smoothquant", "frantar2023gptq", "lin2024awq", "dettmers2023qlora",
    "yao2023react", "beltagy2020longformer", "wallace2024instruction", "greshake2023not",
    "lewis2019unsupervised", "petroni2019language", "roberts2020much",
    "vaswani2017attention", "devlin2019bert", "radford2018improving", "radford2019language",
    "brown2020language", "lample2019cross", "conneau2020unsupervised", "dosovitskiy2021image",
    "he2016deep", "hinton2015distilling", "jacob2018quantization", "han2015learning",
    "goodfellow2014generative", "kingma2014auto", "radford2021learning", "oord2018representation",
    "holtzman2020curious", "keskar2019ctrl", "fan2018hierarchical", "mihalcea2004textrank",
    "lin2004rouge", "sennrich2016neural", "wu2016google", "rust2021good", "kang2018self",
    "mildenhall2020nerf", "kaplan2020scaling", "hoffmann2022training", "korthikanti2022reducing",
    "chen2016training", "micikevicius2018mixed", "li2020pytorch", "loshchilov2019decoupled",
    "northcutt2021confident", "broder1997resemblance", "wei2019eda", "pope2023efficiently",
    "reimers2019sentence", "wang2020minilm", "ouyang2022training", "xiao2021early", "touvron2021training",
    "gidaris2018unsupervised", "howard2018universal", "gururangan2020dont", "liu2019roberta", "wettig2023should",
    "hu2022lora", "rafailov2023direct", "hewitt2021initializing", "schick2023toolformer",
    "yu2022orca", "kwon2023efficient", "shazeer2019fast", "ainslie2023gqa", "deepseekai2024deepseekv2",
    "lewis2020retrieval", "robertson2009probabilistic", "karpukhin2020dense", "lee2019latent",
    "cormack2009reciprocal", "johnson2021billion", "malkov2020efficient", "nogueira2019passage",
    # ed-ch67: Chapter 6/7 as of 2026
    "openai2023deprecations", "grattafiori2024llama3", "qwen2024qwen25", "yang2025qwen3",
    "deepseekai2024deepseekv3", "deepseekai2025deepseekr1", "glm2024chatglm", "openai2025gptoss",
    "openai2024o1", "lambert2024tulu3", "shao2024deepseekmath", "ethayarajh2024kto", "leviathan2023fast",
    "chen2023accelerating", "shazeer2017outrageously", "fedus2022switch", "jiang2024mixtral", "peng2024yarn",
    "liu2024lost", "meta2024llama3license", "osi2024osaid", "zhai2023sigmoid", "liu2023visual",
    "bai2023qwenvl", "wang2024qwen2vl", "yang2022chinese", "abramson2024accurate", "jumper2021highly",
    "lin2023evolutionary", "zhai2024actions", "rajput2023recommender", "kerbl2023gaussian",
    "cac2023genai", "cac2025labeling", "eu2024aiact",
    # ed-early
    "xiong2020layer", "lecun1998gradient", "krizhevsky2012imagenet", "lan2020albert", "bahdanau2015neural",
    "mikolov2013distributed", "hochreiter1997long", "touvron2023llama", "rombach2022high",
    "touvron2023llama2",
    "rajbhandari2020zero", "chowdhery2023palm",
}

PIN = re.compile(r"`([A-Za-z0-9][A-Za-z0-9._-]*)==([^`\s]+)`")
ROLE = re.compile(r"\{(cite(?::\w+)?|ref|doc)\}`([^`]+)`")
LABEL = re.compile(r"^\(([\w-]+)\)=\s*$", re.MULTILINE)


def _bib_entries() -> dict[str, str]:
    """key -> body of every @type{key, ...} entry in references.bib."""
    text = BIB.read_text(encoding="utf-8")
    return {m[1]: m[2] for m in re.finditer(r"@\w+\{([^,\s]+),(.*?)\n\}", text, re.DOTALL)}


def _pyproject_pins() -> dict[str, str]:
    """Normalised distribution name -> pinned version, from dependencies and every extra."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        specs += extra
    pins = {}
    for spec in specs:
        name, sep, version = spec.partition("==")
        assert sep, f"pyproject.toml: {spec!r} is not pinned with =="
        pins[_normalise(name)] = version.strip()
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pages() -> dict[str, str]:
    """Every markdown text of the book: the .md pages and the markdown cells of the notebooks."""
    pages = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in BOOK.glob("*.md")}
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        pages[str(nb_path.relative_to(ROOT))] = "\n\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return pages


def _roles(text: str, kind: str) -> list[str]:
    """Targets of {kind}`...` roles; `text <target>` gives target; cite lists are split."""
    targets = []
    for role, body in ROLE.findall(text):
        if role.split(":")[0] != kind:
            continue
        match = re.search(r"<([^<>]+)>\s*$", body)
        body = match[1] if match else body
        targets += [t.strip() for t in body.split(",")] if kind == "cite" else [body.strip()]
    return targets


def test_bibliography_holds_exactly_the_agreed_keys_with_links():
    entries = _bib_entries()
    assert set(entries) == BIB_KEYS, (
        f"missing: {sorted(BIB_KEYS - set(entries))}, extra: {sorted(set(entries) - BIB_KEYS)}")
    for key, body in entries.items():
        for field in ("author", "title", "year"):
            assert re.search(rf"^\s*{field}\s*=", body, re.MULTILINE), f"{key}: no {field}"
        assert re.search(r"^\s*(doi|url|eprint)\s*=", body, re.MULTILINE), f"{key}: no DOI, URL or arXiv id"


def test_every_citation_is_in_the_bibliography():
    keys = set(_bib_entries())
    for page, text in _pages().items():
        unknown = sorted(set(_roles(text, "cite")) - keys)
        assert not unknown, f"{page} cites keys missing from references.bib: {unknown}"


def test_labels_are_unique_and_every_ref_resolves():
    pages = _pages()
    seen: dict[str, str] = {}
    for page, text in pages.items():
        for label in LABEL.findall(text):
            assert label not in seen, f"label {label!r} defined in {seen[label]} and {page}"
            seen[label] = page
    for page, text in pages.items():
        missing = sorted(set(_roles(text, "ref")) - set(seen))
        assert not missing, f"{page} links to undefined labels: {missing}"


@pytest.mark.parametrize("path", APPENDICES, ids=[p.stem for p in APPENDICES])
def test_appendix_doc_links_exist(path):
    for target in _roles(path.read_text(encoding="utf-8"), "doc"):
        base = ROOT if target.startswith("/") else path.parent
        stem = (base / target.lstrip("/")).resolve()
        assert any(stem.with_suffix(s).is_file() for s in (".md", ".ipynb")), f"{path.name}: no page {target}"


def test_appendix_versions_equal_the_pins_in_pyproject():
    pins = _pyproject_pins()
    quoted_a = {}
    for path in APPENDICES:
        for name, version in PIN.findall(path.read_text(encoding="utf-8")):
            key = _normalise(name)
            assert key in pins, f"{path.name} quotes {name}=={version}, which pyproject.toml does not pin"
            assert version == pins[key], f"{path.name} quotes {name}=={version}, pyproject.toml pins {pins[key]}"
            if path.name.startswith("appendix_a"):
                quoted_a[key] = version
    assert quoted_a == pins, f"appendix A does not list these pins: {sorted(set(pins) - set(quoted_a))}"


def test_appendices_and_references_close_the_table_of_contents():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    files = [entry["file"] for entry in toc["chapters"]]
    tail = [f"book/{p.stem}" for p in APPENDICES] + ["book/references"]
    assert [p.stem[:10] for p in APPENDICES] == [f"appendix_{c}" for c in "abcd"]
    assert files[-len(tail):] == tail, f"the table of contents must end with {tail}, got {files[-len(tail):]}"
