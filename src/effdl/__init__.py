"""effdl: the library behind *Efficient Models*, one module per technique family.

Notebooks import it as ``import effdl``, show its code with :func:`effdl.show`, put measured
values into the prose with :func:`effdl.glue` and assert their headline results with
:func:`effdl.claim`. Each chapter's experiments live in :mod:`effdl.experiments`.
"""

from effdl import bench, claims, config, data, lm, models, plots, stats, train, zoo
from effdl.claims import claim, measure, target
from effdl.config import FAST, cache_dir, device, mode, pick, seed_everything
from effdl.show import glue, show

__all__ = [
    "FAST", "bench", "cache_dir", "claim", "claims", "config", "data", "device", "glue", "lm", "measure", "mode",
    "models", "pick", "plots", "seed_everything", "show", "stats", "target", "train", "zoo",
]  # fmt: skip
__version__ = "0.1.0"
