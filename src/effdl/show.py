"""Show the source of a library function in a notebook, so the prose and the code never drift."""

from __future__ import annotations

import inspect
from typing import Any

from IPython.display import Code


def show(obj: Any) -> Code:
    """The highlighted source of a function, class or method of ``effdl`` (or anything importable).

    Notebooks call ``effdl.show(effdl.bench.latency)`` instead of copying the code, so what the
    reader reads is exactly what runs.
    """
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as err:
        raise ValueError(f"obj must be a Python function, class or method with source, got {obj!r}") from err
    return Code(inspect.cleandoc(source) if source.startswith((" ", "\t")) else source, language="python")
