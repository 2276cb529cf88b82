"""effdl: the library behind *Efficient Models*, one module per technique family.

Notebooks import it as ``import effdl`` and show its code with :func:`effdl.show`.
"""

from effdl import bench, config, data, models, plots, train, zoo
from effdl.config import FAST, cache_dir, device, mode, pick, seed_everything
from effdl.show import show

__all__ = [
    "FAST", "bench", "cache_dir", "config", "data", "device", "mode", "models", "pick", "plots",
    "seed_everything", "show", "train", "zoo",
]  # fmt: skip
__version__ = "0.1.0"
