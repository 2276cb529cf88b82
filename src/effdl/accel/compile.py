"""``torch.compile`` (``sec-hw-compile``): graph breaks found with ``torch._dynamo.explain``, and an empty
compile cache so that a compile time measured is the cold one a fresh machine pays.

Dynamo traces Python into FX graphs; where it meets something it cannot put in a graph (a tensor's value read
back into Python with ``.item()``, a branch on it, a ``print``), it ends the graph, runs that code in Python, and
starts a new graph after it: a *graph break*. Each break costs a return to Python and stops fusion across it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class GraphReport:
    """What Dynamo made of a function: graphs, breaks between them, and why each break happened."""

    graphs: int
    breaks: int
    reasons: tuple[str, ...]


def graph_breaks(fn: Callable[..., Any], *args: Any) -> GraphReport:
    """Trace ``fn(*args)`` with ``torch._dynamo.explain`` (no code is generated) and report its graphs."""
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    reasons = tuple(str(getattr(r, "reason", r)).strip().splitlines()[0] for r in explained.break_reasons)
    # one reason per break: explain's own graph_break_count is graph_count - 1, which misses a break that no
    # graph follows (a branch that returns at once)
    return GraphReport(explained.graph_count, len(reasons), reasons)


@contextlib.contextmanager
def fresh_compile_cache() -> Iterator[str]:
    """Point Inductor's on-disk cache at a new empty folder (and forget Dynamo's compiled code) while the block
    runs; the previous folder is restored afterwards. The first compile in a process inside this block is a cold
    one: later compiles of the same kernels hit Inductor's in-memory caches even here."""
    previous = os.environ.get(CACHE_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="inductor-") as folder:
        os.environ[CACHE_VARIABLE] = folder
        torch._dynamo.reset()
        try:
            yield folder
        finally:
            if previous is None:
                os.environ.pop(CACHE_VARIABLE, None)
            else:
                os.environ[CACHE_VARIABLE] = previous
