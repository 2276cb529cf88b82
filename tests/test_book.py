"""Structure of the book: the table of contents, the notebooks' anatomy, the bibliography."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED_HEADINGS = ("Pitfalls", "Summary", "Exercises", "References")
CODE_WIDTH = 88  # characters of a code cell's line that fit the site's page without scrolling


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_top_level_layout_is_the_designed_one():
    tracked = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".ci"}
    expected = {"README.md", "_config.yml", "_toc.yml", "book", "notebooks", "src", "tests",
                "pyproject.toml", "Makefile", ".ci"}  # fmt: skip
    ignored_outputs = {"_build", "results"}
    assert expected <= tracked and tracked - expected <= ignored_outputs


def test_toc_lists_every_page_and_every_entry_exists():
    files = _toc_files()
    for entry in files:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), entry
    listed = {f for f in files if f.startswith("notebooks/")}
    assert listed == {f"notebooks/{nb.stem}" for nb in NOTEBOOKS}
    pages = {f"book/{p.stem}" for p in (ROOT / "book").glob("*.md")}
    assert pages <= set(files)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    captions = [part["caption"] for part in toc["parts"]]
    assert captions[:4] == ["Foundations", "Compression", "Training at scale", "Inference and serving"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_anatomy(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    first = _source(cells[0])
    assert re.match(r"\(chap-[a-z-]+\)=\n# ", first) and "colab.research.google.com" in first
    install, setup = _source(cells[1]), _source(cells[2])
    assert '"google.colab" in sys.modules' in install and "%pip install" in install
    assert "seed_everything" in setup and "effdl.mode()" in setup and "effdl.device()" in setup
    headings = [line for c in cells if c["cell_type"] == "markdown"
                for line in _source(c).splitlines() if line.startswith("## ")]  # fmt: skip
    labelled = re.findall(r"^\(sec-[a-z0-9-]+\)=\n## ", "\n".join(_source(c) for c in cells), re.M)
    assert len(labelled) >= 3, "sections carry MyST labels: '(sec-chapter-topic)=' above '## Title'"
    for required in REQUIRED_HEADINGS:
        assert any(required in h for h in headings), f"missing section {required}"
    code = "\n".join(_source(c) for c in cells if c["cell_type"] == "code")
    assert "effdl.show(" in code and ("plt." in code or "plots." in code)
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), "commit without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_fit_the_page(path):
    cells = json.loads(path.read_text())["cells"]
    wide = [line for c in cells if c["cell_type"] == "code"
            for line in _source(c).splitlines() if len(line) > CODE_WIDTH]  # fmt: skip
    assert not wide, f"{len(wide)} code lines longer than {CODE_WIDTH} characters, e.g. {wide[0]!r}"


def _prose(cell) -> str:
    """A markdown cell without what may hold numbers legitimately: math, code, roles, directives, links."""
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]+\$", " ", _source(cell), flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"\{[\w:]+\}`[^`]*`|`[^`]*`", " ", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


# a number followed by the unit of a measured result
TYPED_RESULT = re.compile(
    r"(?<![\w.])[~≈<>]?\s?\d[\d,]*(?:\.\d+)?\s?(?:%|pt\b|×|x\b|ms\b|µs\b|s\b|dB\b|GB/s|tok/s|tokens/s|"
    r"GFLOP/s|MB\b|KB\b|kB\b|nats?\b)"
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_measured_number_is_typed_into_the_prose(path):
    """Results are glued from the run; a notebook may exempt settings (``"90 %"`` sparsity) and cited
    published figures in its metadata ``effdl.typed_settings``: ``{text: reason}``."""
    nb = json.loads(path.read_text())
    exempt = nb["metadata"].get("effdl", {}).get("typed_settings", {})
    assert all(isinstance(reason, str) and len(reason) > 10 for reason in exempt.values()), "give each a reason"
    typed = [m.group().strip() for c in nb["cells"] if c["cell_type"] == "markdown"
             for m in TYPED_RESULT.finditer(_prose(c))]  # fmt: skip
    assert not [t for t in typed if t not in exempt], "glue these numbers or exempt them as settings"


def test_references_are_labels_not_typed_numbers():
    sources = [*NOTEBOOKS, *(ROOT / "src").rglob("*.py"), *(ROOT / "book").glob("*.md")]
    typed = re.compile(r"\b(?:[Ss]ections?|[Cc]hapters?|§)\s+\d+|^## \d+\.\d+", re.M)
    found = {p.name: typed.findall(p.read_text()) for p in sources}
    assert not {name: hits for name, hits in found.items() if hits}


def test_labels_cited_by_the_library_exist_in_the_book():
    defined = {m for p in NOTEBOOKS for m in re.findall(r"\(((?:sec|chap)-[a-z0-9-]+)\)=", p.read_text())}
    library = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    cited = set(re.findall(r"``((?:sec|chap)-[a-z0-9-]+)``|section=\"((?:sec|chap)-[a-z0-9-]+)\"", library))
    cited = {a or b for a, b in cited}
    assert cited, "the library cites no section"
    assert cited <= defined, f"labels cited in src but defined in no notebook: {sorted(cited - defined)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_leave_sizes_baselines_and_data_to_their_experiments_module(path):
    """Only ``effdl.experiments`` calls ``pick``, ``zoo`` and ``data``; a notebook may *show* their code."""
    nb = json.loads(path.read_text())
    code = "\n".join(_source(c) for c in nb["cells"][2:] if c["cell_type"] == "code")  # after the install cell
    code = re.sub(r"effdl\.show\([^)]*\)", " ", code)
    calls = re.findall(r"\bpick\(|\bzoo\.\w+\(|\bdata\.\w+\(|from effdl import [^\n]*\b(?:zoo|data)\b", code)
    assert not calls, f"move these into effdl/experiments/{path.stem.split('_', 1)[1]}.py: {calls}"
    assert f"from effdl.experiments import {path.stem.split('_', 1)[1]} as ex" in code


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    texts = [p.read_text() for p in [*NOTEBOOKS, *(ROOT / "book").glob("*.md")]]
    cited = {k.strip() for t in texts for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", t)
             for k in group.split(",")}  # fmt: skip
    assert cited, "the book cites nothing"
    assert cited <= keys, f"unknown citation keys: {sorted(cited - keys)}"
