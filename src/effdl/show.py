"""What a notebook puts on the page: the library's source (:func:`show`) and measured values for
the prose (:func:`glue`), so neither the code nor the numbers in the text can drift from what ran."""

from __future__ import annotations

import inspect
from typing import Any

from IPython.display import Code, display


def show(obj: Any) -> None:
    """Display the highlighted source of a function, class or method of ``effdl`` (or anything importable).

    Notebooks call ``effdl.show(effdl.bench.latency)`` instead of copying the code, so what the
    reader reads is exactly what runs. It displays itself wherever it is called in a cell.
    """
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as err:
        raise ValueError(f"obj must be a Python function, class or method with source, got {obj!r}") from err
    code = Code(inspect.cleandoc(source) if source.startswith((" ", "\t")) else source, language="python")
    display(code)


def glue(name: str, value: Any) -> Any:
    """Store ``value`` under ``name`` for the prose (``{glue:text}`name:.1f```) and return it.

    A thin wrapper of ``myst_nb.glue`` that hides the value in the cell's output; the sentence
    around it says what was measured, and the built book fills in this run's number.
    """
    from myst_nb import glue as myst_glue

    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name must be letters, digits, '-' or '_', got {name!r}")
    myst_glue(name, value, display=False)
    return value
