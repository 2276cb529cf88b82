"""A teacher run beside the student, batch by batch (``sec-distill-lm-kd``).

When the teacher's logits are too many to cache (a language model's are ``tokens × vocabulary``
numbers for every window the student might see), the teacher answers each batch as it comes:
:class:`TeacherBatches` wraps any ``(inputs, targets)`` batches and yields
``(inputs, (targets, teacher_logits))``, what :class:`~effdl.distill.losses.KDLoss` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from effdl.lm import logits_of


class TeacherBatches:
    """``batches`` with the teacher's logits added to every target, computed on the fly without gradients, in
    eval mode, on the teacher's device, and returned on the device of the inputs. Sized when ``batches`` is."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, Any]], teacher: nn.Module) -> None:
        if teacher.training:
            raise ValueError("teacher must be in eval mode (call teacher.eval()): in train mode its dropout and "
                             "BatchNorm change its answers batch by batch")  # fmt: skip
        self.batches, self.teacher = batches, teacher
        self.device = next(teacher.parameters()).device

    @torch.no_grad()
    def teach(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs``, as float32 on the inputs' device."""
        return logits_of(self.teacher, inputs.to(self.device)).float().to(inputs.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, tuple[Any, torch.Tensor]]]:
        for inputs, targets in self.batches:
            yield inputs, (targets, self.teach(inputs))

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]
