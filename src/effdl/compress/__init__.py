"""``effdl.compress``: Deep Compression, the three stages in one file (``chap-combine``).

- :mod:`~effdl.compress.sharing`: k-means weight sharing and centroid fine-tuning
- :mod:`~effdl.compress.coding`: entropy bound, Huffman and canonical codes, fixed-width bit streams
- :mod:`~effdl.compress.packfile`: one file per stage (pruned, shared, Huffman-coded), read back without pickle
"""

from effdl.compress import coding, packfile, sharing
from effdl.compress.sharing import bake_, kmeans_1d, share_weights_

__all__ = ["bake_", "coding", "kmeans_1d", "packfile", "share_weights_", "sharing"]
