"""Response-based knowledge distillation (Hinton et al., 2015; ``sec-distill-kd``).

The student matches the teacher's *softened* class distribution, ``softmax(z / T)`` at a temperature
``T > 1``, which keeps the teacher's ranking of the wrong classes ("dark knowledge") that the argmax
label throws away. The gradient of the soft term with respect to a student logit is ``(q_i - p_i) / T``,
so the term is multiplied by ``T²`` to keep its size independent of ``T`` when it is mixed with the
hard-label cross-entropy:

    loss = α · T² · KL(p_T ‖ q_T) + (1 − α) · CE(z_s, y)

with ``p_T`` the teacher's and ``q_T`` the student's distribution at temperature ``T``. Logits of any
shape ``(..., classes)`` are accepted: a language model's ``(batch, time, vocab)`` is distilled token by
token (every position counts as one example).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")  # fmt: skip


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The softened distribution ``softmax(logits / T)`` over the last dimension."""
    _check_temperature(temperature)
    return F.softmax(logits.float() / temperature, dim=-1)


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
                  scale: bool = True) -> torch.Tensor:  # fmt: skip
    """``T² · KL(p_T ‖ q_T)`` averaged over examples (``F.kl_div(..., reduction="batchmean")`` on logits
    flattened to ``(examples, classes)``); ``scale=False`` leaves out the ``T²`` (a common mistake, measured
    in ``sec-distill-pitfalls``). The teacher's logits carry no gradient."""
    _check_pair(student_logits, teacher_logits)
    _check_temperature(temperature)
    classes = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.reshape(-1, classes).float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().reshape(-1, classes).float() / temperature, dim=-1)
    divergence = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return divergence * temperature**2 if scale else divergence


def teacher_labels(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's argmax as hard labels: what "distillation" from labels alone keeps of the teacher."""
    return teacher_logits.argmax(-1)


class KDLoss:
    """``loss(student_logits, (labels, teacher_logits))`` for :func:`effdl.train.fit`: ``alpha`` of the
    ``T²``-scaled soft-target divergence plus ``1 - alpha`` of the cross-entropy with the true labels
    (``sec-distill-kd``). ``alpha=1`` distils from the teacher alone; ``alpha=0`` is ordinary training."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, scale: bool = True) -> None:
        _check_temperature(temperature)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha, self.scale = temperature, alpha, scale

    def __call__(self, student_logits: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if not (isinstance(target, tuple | list) and len(target) == 2):
            raise ValueError("target must be a (labels, teacher_logits) pair")
        labels, teacher_logits = target
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match student_logits "
                             f"{tuple(student_logits.shape)}")  # fmt: skip
        soft = kd_divergence(student_logits, teacher_logits, self.temperature, self.scale)
        if self.alpha == 1:
            return soft
        classes = student_logits.shape[-1]
        hard = F.cross_entropy(student_logits.reshape(-1, classes).float(), labels.reshape(-1))
        return self.alpha * soft + (1 - self.alpha) * hard

    def __repr__(self) -> str:
        return f"KDLoss(temperature={self.temperature}, alpha={self.alpha}, scale={self.scale})"
