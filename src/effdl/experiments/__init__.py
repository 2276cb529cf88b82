"""The book's experiments: one module per chapter, named after its notebook without the number
(``notebooks/03_quant_cnn.ipynb`` -> :mod:`effdl.experiments.quant_cnn`).

A chapter module is the only code that chooses sizes (``pick``), loads baselines (``zoo``) and
data (``data``); the notebook and ``make bench`` both call it, so they measure the same thing.
Each module names its notebook (``NOTEBOOK = "03_quant_cnn"``) and defines ``bench()``, which
runs the chapter's headline experiments and records their claims, targets and measurements
(:mod:`effdl.claims`). ``python -m effdl.report`` finds the modules here, so a new chapter adds
one module and edits no central table. Modules whose name starts with ``_`` hold what several
chapters share and are not chapters.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def chapters() -> dict[str, ModuleType]:
    """Every chapter module, by name, in the book's order (found on disk, sorted by ``NOTEBOOK``)."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    modules = {name: importlib.import_module(f"{__name__}.{name}") for name in names}
    return dict(sorted(modules.items(), key=lambda item: item[1].NOTEBOOK))
