"""Structure of the book: the table of contents, the notebooks' anatomy, the bibliography."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED_HEADINGS = ("Pitfalls", "Summary", "Exercises", "References")


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
    assert first.startswith("# ") and "colab.research.google.com" in first
    install, setup = _source(cells[1]), _source(cells[2])
    assert '"google.colab" in sys.modules' in install and "%pip install" in install
    assert "seed_everything" in setup and "effdl.mode()" in setup and "effdl.device()" in setup
    headings = [line for c in cells if c["cell_type"] == "markdown"
                for line in _source(c).splitlines() if line.startswith("## ")]  # fmt: skip
    numbered = [h for h in headings if re.match(r"## \d+\.\d+ ", h)]
    assert len(numbered) >= 3, "sections are numbered like '## 1.2 Title'"
    for required in REQUIRED_HEADINGS:
        assert any(required in h for h in headings), f"missing section {required}"
    code = "\n".join(_source(c) for c in cells if c["cell_type"] == "code")
    assert "effdl.show(" in code and ("plt." in code or "plots." in code)
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), "commit without outputs"


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    texts = [p.read_text() for p in [*NOTEBOOKS, *(ROOT / "book").glob("*.md")]]
    cited = {k.strip() for t in texts for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", t)
             for k in group.split(",")}  # fmt: skip
    assert cited, "the book cites nothing"
    assert cited <= keys, f"unknown citation keys: {sorted(cited - keys)}"
