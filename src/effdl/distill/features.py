"""Feature distillation: the student also matches what the teacher computes inside (``sec-distill-features``).

- *Hints* (FitNets, Romero et al., 2015): a learned 1×1 convolution maps a student feature map to the
  teacher's channel count, and the mean squared difference to the teacher's map is minimized.
- *Attention transfer* (Zagoruyko & Komodakis, 2017): each map is reduced to a spatial attention map,
  ``Q = Σ_c |A_c|^p`` flattened and divided by its L2 norm, and the student's is pulled toward the
  teacher's; no regressor is needed, so student and teacher may have any channel counts.

:class:`Distiller` wraps a student and a frozen teacher for :func:`effdl.train.fit`: its forward returns the
student's logits, the teacher's logits and the feature loss, and :class:`FeatureKDLoss` mixes them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from effdl.distill.losses import KDLoss

KINDS = ("hint", "attention")


def _same_size(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0] or \
            student.shape[2:] != teacher.shape[2:]:  # fmt: skip
        raise ValueError(f"feature maps must be (batch, channels, height, width) with the same batch and size, "
                         f"got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")  # fmt: skip


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``Σ_c |A_c|^p`` over the channels of a ``(batch, channels, h, w)`` map, flattened to ``(batch, h·w)`` and
    divided by its L2 norm."""
    if feature.dim() != 4:
        raise ValueError(f"feature must be (batch, channels, height, width), got {tuple(feature.shape)}")
    return F.normalize(feature.float().abs().pow(p).sum(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean over the batch of ``‖Q_s − Q_t‖₂`` between the normalized attention maps (the teacher's detached)."""
    _same_size(student, teacher)
    return (attention_map(student, p) - attention_map(teacher.detach(), p)).norm(dim=1).mean()


class HintRegressor(nn.Module):
    """A 1×1 convolution from ``student_channels`` to ``teacher_channels``, trained with the student."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        if student_channels <= 0 or teacher_channels <= 0:
            raise ValueError(f"channel counts must be positive, got {student_channels}, {teacher_channels}")
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)

    def forward(self, student: torch.Tensor) -> torch.Tensor:
        return self.proj(student)


def hint_loss(student: torch.Tensor, teacher: torch.Tensor, regressor: HintRegressor) -> torch.Tensor:
    """Mean squared difference between the regressed student map and the teacher's (detached)."""
    _same_size(student, teacher)
    return F.mse_loss(regressor(student).float(), teacher.detach().float())


class FeatureTap:
    """Forward hooks that keep the latest output of each named submodule of ``model`` in ``features``."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no submodule named {missing}; some names: {list(modules)[1:8]}")
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keeper(n)) for n in names]

    def _keeper(self, name: str):
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.features[name] = output

        return keep

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class Distilled(NamedTuple):
    """What :class:`Distiller` returns for a batch."""

    logits: torch.Tensor  # the student's
    teacher_logits: torch.Tensor
    feature_loss: torch.Tensor  # summed over the layer pairs


class Distiller(nn.Module):
    """A student trained beside a frozen teacher on pairs of layers ``pairs`` (student layer -> teacher layer),
    with ``kind`` ``"hint"`` (one :class:`HintRegressor` per pair, sized from one pass over ``example``) or
    ``"attention"``. The teacher stays in eval mode whatever ``train()`` is called with: a teacher in train mode
    would update its BatchNorm statistics and drop activations out (``sec-distill-pitfalls``).

    Only the student (and the regressors) learn; :meth:`release` hands the student back as a plain model.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str], example: torch.Tensor,
                 kind: str = "hint") -> None:  # fmt: skip
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not pairs:
            raise ValueError("pairs must name at least one (student layer, teacher layer) pair")
        self.student, self.teacher, self.pairs, self.kind = student, teacher.eval(), dict(pairs), kind
        self.teacher.requires_grad_(False)
        self._student_tap = FeatureTap(student, list(self.pairs))
        self._teacher_tap = FeatureTap(teacher, list(self.pairs.values()))
        self.regressors = nn.ModuleDict()
        if kind == "hint":
            was_training = student.training
            with torch.no_grad():
                student.eval()(example), teacher(example)
            student.train(was_training)
            for s_name, t_name in self.pairs.items():
                channels = (self._student_tap.features[s_name].shape[1], self._teacher_tap.features[t_name].shape[1])
                self.regressors[s_name.replace(".", "_")] = HintRegressor(*channels).to(example.device)

    def release(self) -> nn.Module:
        """Remove the hooks from both models and return the student, a plain model again."""
        self._student_tap.remove()
        self._teacher_tap.remove()
        return self.student

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> Distilled:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.student(x)
        losses = []
        for s_name, t_name in self.pairs.items():
            s, t = self._student_tap.features[s_name], self._teacher_tap.features[t_name]
            if self.kind == "hint":
                losses.append(hint_loss(s, t, self.regressors[s_name.replace(".", "_")]))
            else:
                losses.append(attention_loss(s, t))
        return Distilled(logits, teacher_logits, torch.stack(losses).sum())


class FeatureKDLoss:
    """``loss(distilled, labels)`` for :func:`effdl.train.fit` with a :class:`Distiller`: the response loss (a
    :class:`~effdl.distill.losses.KDLoss` on the teacher's logits, or plain cross-entropy when ``kd`` is None)
    plus ``weight`` times the feature loss."""

    def __init__(self, weight: float, kd: KDLoss | None = None) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight, self.kd = weight, kd

    def __call__(self, out: Distilled, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, Distilled):
            raise ValueError(f"outputs must come from a Distiller, got {type(out).__name__}")
        response = self.kd(out.logits, (labels, out.teacher_logits)) if self.kd else F.cross_entropy(out.logits, labels)
        return response + self.weight * out.feature_loss
