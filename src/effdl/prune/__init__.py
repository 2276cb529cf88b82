"""``effdl.prune``: removing weights, from saliency scores to real speed-ups (``chap-prune-unstructured``,
``chap-prune-structured``).

- :mod:`~effdl.prune.masks`: magnitude, random, Taylor and OBD scores; layer-wise, global, per-row
  and N:M masks; masks kept during fine-tuning; measured sparsity; schedules
- :mod:`~effdl.prune.storage`: bytes of dense, bitmask and CSR storage; sparse vs dense matmul
- :mod:`~effdl.prune.structured`: channel groups, channel/filter and residual-block removal, Torch-Pruning
- :mod:`~effdl.prune.llm`: magnitude and Wanda pruning of LLM linear layers, 50 % and 2:4
- :mod:`~effdl.prune.recipes`: one-shot, iterative with fine-tuning, sensitivity scan, lottery-ticket rewinding
"""

from effdl.prune import llm, masks, recipes, storage, structured
from effdl.prune.masks import MaskKeeper, apply_masks_, global_masks, layer_masks, nm_masks, sparsity

__all__ = [
    "MaskKeeper", "apply_masks_", "global_masks", "layer_masks", "llm", "masks", "nm_masks", "recipes",
    "sparsity", "storage", "structured",
]  # fmt: skip
