"""Optimizers and learning-rate schedules, measured in steps to a target (``chap-optim``).

* :mod:`effdl.optim.updates`: AdamW's update and Muon's Newton-Schulz orthogonalization from scratch, to check
  against ``torch.optim`` (``sec-optim-zoo``).
* :mod:`effdl.optim.hybrid`: Muon on a network's hidden 2-D weights and AdamW on the rest, as one optimizer a
  scheduler can drive.
* :mod:`effdl.optim.factory`: every optimizer of the chapter by name, with its customary settings.
* :mod:`effdl.optim.schedules`: warm-up, cosine, one-cycle and warmup-stable-decay (``sec-optim-schedules``).
* :mod:`effdl.optim.loop`: a step-counted training loop that records a validation curve, and steps to a target.
* :mod:`effdl.optim.range_test`: Smith's learning-rate range test (``sec-optim-range-test``).

The package knows no data set: models, batches and evaluation come in as arguments.
"""

from effdl.optim.factory import NAMES, build
from effdl.optim.hybrid import MuonAdamW, split_for_muon
from effdl.optim.loop import Curve, steps_to_target, train_steps
from effdl.optim.range_test import RangeTest, lr_range_test
from effdl.optim.schedules import SCHEDULES, lr_factors, scheduler
from effdl.optim.updates import adamw_step, newton_schulz

__all__ = [
    "NAMES", "SCHEDULES", "Curve", "MuonAdamW", "RangeTest", "adamw_step", "build", "lr_factors", "lr_range_test",
    "newton_schulz", "scheduler", "split_for_muon", "steps_to_target", "train_steps",
]  # fmt: skip
