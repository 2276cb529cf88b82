"""``effdl.distill``: teaching a small model with a large one (``chap-distill``).

- :mod:`~effdl.distill.losses`: response-based KD (softened targets, the ``T²`` correction, mixing with the
  true labels), as a ``loss`` for :func:`effdl.train.fit`
- :mod:`~effdl.distill.ensemble`: one target from several teachers (averaged probabilities or logits, weighted)
- :mod:`~effdl.distill.features`: FitNets hints and attention transfer, and :class:`Distiller`, a student
  beside a frozen teacher
"""

from effdl.distill import ensemble, features, losses
from effdl.distill.ensemble import combine_teachers
from effdl.distill.features import Distiller, FeatureKDLoss
from effdl.distill.losses import KDLoss, kd_divergence

__all__ = [
    "Distiller", "FeatureKDLoss", "KDLoss", "combine_teachers", "ensemble", "features", "kd_divergence", "losses",
]  # fmt: skip
