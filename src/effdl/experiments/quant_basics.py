"""Chapter 2's experiments (``notebooks/02_quant_basics.ipynb``): number formats and the error of
quantizing single tensors of the trained baselines."""

from __future__ import annotations

NOTEBOOK = "02_quant_basics"


def bench() -> None:
    """The chapter's headline rows (see the notebook's claims)."""
