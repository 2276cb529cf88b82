"""The library's rooms: technique packages know no data set, and only experiments choose sizes.

Read from the source (``ast``), not by importing: a technique package (``effdl.quant``,
``effdl.prune`` and every later one) may not import ``effdl.zoo``, ``effdl.data`` or
``effdl.experiments``, nor call ``pick``. Its ``__main__.py``, a program the reader runs, may.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "effdl"
TECHNIQUE_PACKAGES = sorted(p for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()
                            and p.name not in {"experiments", "__pycache__"})  # fmt: skip
FORBIDDEN = {"effdl.zoo", "effdl.data", "effdl.experiments"}


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [m for m in _imported_modules(tree) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    found += [f"pick() at line {n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Call)
              and getattr(n.func, "id", getattr(n.func, "attr", None)) == "pick"]  # fmt: skip
    found += [m for m in _imported_modules(tree) if m.endswith(".pick")]
    return found


def test_there_are_technique_packages_to_check():
    assert {"quant", "prune"} <= {p.name for p in TECHNIQUE_PACKAGES}


@pytest.mark.parametrize("package", TECHNIQUE_PACKAGES, ids=lambda p: p.name)
def test_technique_packages_know_no_data_set(package):
    for path in package.rglob("*.py"):
        if path.name != "__main__.py":
            assert not _violations(path), f"{path.relative_to(SRC)} uses {_violations(path)}"


def test_the_rule_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from effdl import zoo\nfrom effdl.config import pick\nimport effdl.data\nn = pick(fast=1, full=2)")
    assert sorted(_violations(bad)) == ["effdl.config.pick", "effdl.data", "effdl.zoo", "pick() at line 4"]
