"""Quantized layers for simulation and quantization-aware training (``chap-quant-cnn``).

A :class:`QuantLayer` wraps a trained ``nn.Conv2d`` or ``nn.Linear``: its weight passes through a
:class:`WeightQuantizer` and its input through an :class:`ActQuantizer` before the float op runs,
so the model computes exactly with the values an integer engine would represent ("fake" or
simulated quantization). Rounding has zero gradient almost everywhere; the straight-through
estimator (STE) passes the gradient through it unchanged, which is what makes QAT train.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from effdl.quant.core import check_bits, qparams, qrange
from effdl.quant.observers import make_observer

WEIGHT_FORMATS = ("int", "ternary", "binary")


def fake_quantize_ste(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q_min: int,
                      q_max: int) -> torch.Tensor:  # fmt: skip
    """Fake-quantize with the straight-through estimator (``sec-quant-cnn-qat``): rounding is the identity backward,
    so the gradient is 1 where the code is inside the grid and 0 where it is clipped.

    When ``scale`` is a parameter, autograd gives it the LSQ gradient (Esser et al., 2020):
    ``(q - z) - x/s`` inside the range, ``q_min - z`` or ``q_max - z`` where clipped.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        # inference: the same values in fewer passes over x (the gradient bookkeeping below is exactly zero)
        return (torch.clamp(torch.round(x / scale) + zero_point, q_min, q_max) - zero_point) * scale
    scaled = x / scale
    code = torch.round(scaled).detach() + zero_point
    inside = (code >= q_min) & (code <= q_max)
    passed = (code - zero_point) + (scaled - scaled.detach())  # value of the code, gradient of x / s
    return torch.where(inside, passed, code.clamp(q_min, q_max) - zero_point) * scale


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward, gradient multiplied by ``factor`` backward (LSQ's step-size gradient scale)."""
    return x.detach() + (x - x.detach()) * factor


def _per_channel(w: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *[1] * (w.dim() - 1))


def ternarize(w: torch.Tensor) -> torch.Tensor:
    """Ternary weights ``{-a, 0, +a}`` by TWN's rule (threshold ``0.7 mean|w|``, ``a`` = mean kept |w|), applied
    per output channel (the paper uses one per layer)."""
    flat = w.detach().abs().flatten(1)
    threshold = 0.7 * flat.mean(1, keepdim=True)
    kept = flat > threshold
    alpha = (flat * kept).sum(1) / kept.sum(1).clamp(min=1)
    mask = _per_channel(w, threshold.flatten()) < w.detach().abs()
    return (_per_channel(w, alpha) * torch.sign(w.detach()) * mask) + (w - w.detach())


def binarize(w: torch.Tensor) -> torch.Tensor:
    """Binary weights ``{-a, +a}`` per output channel with ``a = mean|w|`` (XNOR-Net), STE backward."""
    alpha = w.detach().abs().flatten(1).mean(1)
    return _per_channel(w, alpha) * torch.where(w.detach() >= 0, 1.0, -1.0) + (w - w.detach())


class WeightQuantizer(nn.Module):
    """Symmetric signed fake-quantization of a weight, per output channel or per tensor.

    ``observer`` chooses the range from the weight itself (``minmax``, ``percentile`` or ``mse``).
    With ``learn_scale`` the scale becomes a parameter trained with the network (LSQ, its gradient
    scaled by ``1 / sqrt(N * q_max)``, ``N`` the weights sharing a scale); otherwise it follows the weight
    (refitted whenever the weight changes). ``fmt`` ``ternary`` and ``binary`` replace the integer
    grid by 3 and 2 levels with per-channel magnitudes.
    """

    def __init__(self, bits: int = 8, per_channel: bool = True, observer: str = "minmax", fmt: str = "int",
                 learn_scale: bool = False) -> None:  # fmt: skip
        super().__init__()
        if fmt not in WEIGHT_FORMATS:
            raise ValueError(f"fmt must be one of {WEIGHT_FORMATS}, got {fmt!r}")
        if fmt == "int":
            check_bits(bits, 2, 16)
        self.bits, self.per_channel, self.observer, self.fmt = bits, per_channel, observer, fmt
        self.learn_scale = learn_scale
        self.scale: torch.Tensor | None = None
        self._seen: tuple[int, int] | None = None  # (data_ptr, version) of the weight the scale is for

    @property
    def storage_bits(self) -> int:
        return {"int": self.bits, "ternary": 2, "binary": 1}[self.fmt]

    def _fit_scale(self, w: torch.Tensor) -> torch.Tensor:
        obs = make_observer(self.observer, 0 if self.per_channel else None,
                            **({"bits": self.bits, "symmetric": True} if self.observer == "mse" else {}))  # fmt: skip
        obs.update(w.detach())
        lo, hi = obs.range()
        return qparams(lo.to(w.device), hi.to(w.device), self.bits, signed=True, symmetric=True)[0]

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The scale in use: learned, or refitted when the weight changed since the last call."""
        if self.learn_scale:
            if self.scale is None:
                self.scale = nn.Parameter(self._fit_scale(w))
            q_max = qrange(self.bits, signed=True)[1]
            shared = w.numel() // self.scale.numel()  # N: the weights that share one scale
            return scale_gradient(self.scale, (shared * q_max) ** -0.5).abs().clamp(min=1e-8)
        key = (w.data_ptr(), w._version)
        if self.scale is None or key != self._seen:
            self.scale, self._seen = self._fit_scale(w), key
        return self.scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.fmt == "ternary":
            return ternarize(w)
        if self.fmt == "binary":
            return binarize(w)
        q_min, q_max = qrange(self.bits, signed=True)
        return fake_quantize_ste(w, self.current_scale(w), torch.zeros((), device=w.device), q_min, q_max)

    def extra_repr(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.fmt}{self.bits if self.fmt == 'int' else ''}, {granularity}, {self.observer}"


class ActQuantizer(nn.Module):
    """Affine unsigned fake-quantization of activations with a static range from calibration.

    Life cycle: ``calibrating = True`` -> forward passes feed the observer and return the input
    unchanged; :meth:`freeze` turns the observed range into a scale and zero-point; after that every
    forward fake-quantizes. ``learn_scale`` makes the frozen scale a trainable parameter.
    """

    def __init__(self, bits: int = 8, observer: str = "minmax", learn_scale: bool = False,
                 percentile: float = 99.99) -> None:  # fmt: skip
        super().__init__()
        check_bits(bits, 2, 16)
        self.bits, self.observer_name, self.learn_scale = bits, observer, learn_scale
        kwargs = {"mse": {"bits": bits, "symmetric": False}, "percentile": {"percentile": percentile}}.get(observer, {})
        self.observer = make_observer(observer, None, **kwargs)
        self.calibrating = False
        self.scale: torch.Tensor | None = None
        self.register_buffer("zero_point", None)

    def freeze(self) -> None:
        lo, hi = self.observer.range()
        scale, zero_point = qparams(lo.reshape(()), hi.reshape(()), self.bits, signed=False, symmetric=False)
        self.scale = nn.Parameter(scale) if self.learn_scale else scale
        self.zero_point = zero_point
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer.update(x)
            return x
        if self.scale is None:
            raise RuntimeError("ActQuantizer is not calibrated: run calibrate(model, batches) first")
        q_min, q_max = qrange(self.bits, signed=False)
        scale = scale_gradient(self.scale, (x[0].numel() * q_max) ** -0.5) if self.learn_scale else self.scale
        return fake_quantize_ste(x, scale.to(x.device), self.zero_point.to(x.device), q_min, q_max)

    def extra_repr(self) -> str:
        return f"uint{self.bits}, {self.observer_name}"


class QuantLayer(nn.Module):
    """A conv or linear layer computing with fake-quantized weights (and inputs, if ``act`` is given)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight: WeightQuantizer, act: ActQuantizer | None = None):
        super().__init__()
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise ValueError(f"layer must be nn.Conv2d or nn.Linear, got {type(layer).__name__}")
        self.layer, self.weight_quant, self.act_quant = layer, weight, act
        if weight.learn_scale and weight.fmt == "int":
            weight.current_scale(layer.weight)  # create the learned scale now, before an optimizer is built

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def fold_bn(conv: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Conv2d | nn.Linear:
    """A copy of ``conv`` that computes ``bn(conv(x))`` in inference mode (``sec-quant-cnn-folding``).

    ``bn(y) = gamma (y - mu) / sqrt(var + eps) + beta`` is a per-channel affine map, so it folds
    into the weights (scaled by ``gamma / sigma`` per output channel) and the bias.
    """
    if bn.num_features != conv.weight.shape[0]:
        raise ValueError(f"bn has {bn.num_features} features but the layer has {conv.weight.shape[0]} outputs")
    factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(conv.weight.detach() * _per_channel(conv.weight, factor))
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded.bias = nn.Parameter(bn.bias.detach() + (bias - bn.running_mean) * factor)
    return folded


def fold_batchnorms(model: nn.Module) -> torch.fx.GraphModule:
    """Trace ``model`` and fold every BatchNorm that directly follows a conv/linear used only by it."""
    graph_module = torch.fx.symbolic_trace(model.eval())
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(modules[source.target], nn.Conv2d | nn.Linear)):  # fmt: skip
            continue
        folded = fold_bn(modules[source.target], modules[node.target])
        parent, _, name = source.target.rpartition(".")
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, folded)
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        parent, _, name = node.target.rpartition(".")
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, nn.Identity())
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module
