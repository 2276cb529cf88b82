"""The one execution of every notebook in CI (fast mode), and what it must have produced.

Each notebook runs once through ``nbclient``; a cell that raises (a failed claim, say) fails it.
The executed copy is saved under ``_build/executed/notebooks`` for the site build (``make site``),
which renders the glued values with execution off. The tests then read the outputs: every
``effdl.show`` call rendered its code, every glued reference in the prose has a value, and the
chapter asserted at least three claims.
"""

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED = ROOT / "_build" / "executed"
GLUE_REFERENCE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)(?::[^`]*)?`|```\{glue:figure\}\s+(\S+)")
TIMEOUT_PER_CELL = 900


def _execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        out = EXECUTED / "notebooks" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        times = EXECUTED / "seconds.json"
        record = json.loads(times.read_text()) if times.exists() else {}
        times.write_text(json.dumps(record | {path.stem: round(seconds, 1)}, indent=1))
    return nb, seconds


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def executed(request) -> nbformat.NotebookNode:
    nb, seconds = _execute(request.param)
    print(f"{request.param.stem}: {seconds:.0f} s")
    return nb


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in _code_cells(nb) for o in c.outputs if o.output_type == "stream")


def test_runs(executed):
    assert all(o.output_type != "error" for c in _code_cells(executed) for o in c.outputs)


def test_every_show_call_rendered_its_code(executed):
    for cell in _code_cells(executed):
        calls = len(re.findall(r"\beffdl\.show\(", cell.source))
        rendered = sum("highlight" in o.get("data", {}).get("text/html", "") for o in cell.outputs)
        assert rendered == calls, f"{calls} show() calls but {rendered} rendered in cell:\n{cell.source[:200]}"


def test_every_glued_reference_has_a_value(executed):
    prose = "\n".join(c.source for c in executed.cells if c.cell_type == "markdown")
    referenced = {a or b for a, b in GLUE_REFERENCE.findall(prose)}
    glued = {o.metadata["scrapbook"]["name"] for c in _code_cells(executed) for o in c.outputs
             if "scrapbook" in o.get("metadata", {})}  # fmt: skip
    assert referenced <= glued, f"glue references without a glue() call: {sorted(referenced - glued)}"


def test_asserts_at_least_three_claims(executed):
    lines = [line for line in _stdout(executed).splitlines() if line.startswith("claim ")]
    assert len(lines) >= 3, f"only {len(lines)} claims asserted"
    assert all(line.endswith("holds") for line in lines)
