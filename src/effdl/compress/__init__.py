"""``effdl.compress``: Deep Compression, the three stages in one file (``chap-combine``).

- :mod:`~effdl.compress.sharing`: k-means weight sharing and centroid fine-tuning
- :mod:`~effdl.compress.coding`: entropy bound, Huffman and canonical codes, fixed-width bit streams
- :mod:`~effdl.compress.packfile`: one file per stage (pruned, shared, Huffman-coded), read back without pickle
- :mod:`~effdl.compress.ensemble`: several small models as one, and how often they disagree
"""

from effdl.compress import coding, ensemble, packfile, sharing
from effdl.compress.ensemble import Ensemble, disagreement
from effdl.compress.sharing import bake_, kmeans_1d, share_weights_

__all__ = [
    "Ensemble",
    "bake_",
    "coding",
    "disagreement",
    "ensemble",
    "kmeans_1d",
    "packfile",
    "share_weights_",
    "sharing",
]
