"""Better data for less compute (``chap-data``): score training examples, keep a subset, find duplicated text,
augment image batches and feed them fast.

* :mod:`~effdl.curate.scores`: per-example difficulty, EL2N, forgetting events and a training-free proxy
  (``sec-data-select``).
* :mod:`~effdl.curate.selection`: which examples to keep (hardest, easiest or random, per class), and a fixed number
  of optimizer steps over any subset.
* :mod:`~effdl.curate.dedup`: exact and MinHash near-duplicate detection of text passages (``sec-data-dedup``).
* :mod:`~effdl.curate.augment`: random flips, crops and erasing on a whole batch at once (``sec-data-augment``).
* :mod:`~effdl.curate.loading`: the same images decoded per example, per batch or once (``sec-data-loading``).

Everything works on tensors and strings: no data set is built in.
"""

from effdl.curate.augment import compose, random_crop, random_erasing, random_flip
from effdl.curate.dedup import exact_duplicates, jaccard, minhash, near_duplicates, normalize, shingles
from effdl.curate.loading import PerExampleImages, normalize_images, slice_batches
from effdl.curate.scores import ForgettingCounter, class_mean_distance, el2n, spearman
from effdl.curate.selection import KEEP, select, step_batches

__all__ = [
    "KEEP", "ForgettingCounter", "PerExampleImages", "class_mean_distance", "compose", "el2n", "exact_duplicates",
    "jaccard", "minhash", "near_duplicates", "normalize", "normalize_images", "random_crop", "random_erasing",
    "random_flip", "select", "shingles", "slice_batches", "spearman", "step_batches",
]  # fmt: skip
