"""Structured pruning that makes the tensors smaller: channels, filters and whole residual blocks
(``chap-prune-structured``).

Removing output channel ``c`` of a convolution also removes entry ``c`` of the BatchNorm after
it and input channel ``c`` of every layer that reads it. In a ResNet, a residual add ties the
channels of everything summed: the block's last conv, its shortcut, and the input it adds back.
A :class:`ChannelGroup` lists the layers that must lose the same channels; :func:`resnet_groups`
finds them for :class:`effdl.models.ResNet` by walking the network (Torch-Pruning's DepGraph
does the same for any graph by tracing it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from effdl.models import BasicBlock, ResNet
from effdl.train import evaluate

CRITERIA = ("l1", "l2", "bn", "taylor")
Producer = nn.Conv2d | nn.BatchNorm2d
Consumer = nn.Conv2d | nn.Linear


@dataclass
class ChannelGroup:
    """Layers sharing one set of channels: ``producers`` write them (dim 0), ``consumers`` read them (dim 1)."""

    name: str
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.producers[0].weight.shape[0]


def _projection(module: nn.Module) -> nn.Sequential | None:
    """A block's shortcut when it is a 1x1 conv + BN, ``None`` for identity."""
    return module if isinstance(module, nn.Sequential) and len(module) == 2 else None


def resnet_groups(model: ResNet) -> list[ChannelGroup]:
    """The channel groups of a (possibly already pruned) :class:`~effdl.models.ResNet`.

    Each block's inner channels (conv1 -> bn1 -> conv2) form a group of their own; the channels
    carried between blocks form one group per run of identity shortcuts, closed by a projection.
    """
    if not isinstance(model, ResNet):
        raise ValueError(f"model must be an effdl.models.ResNet, got {type(model).__name__}")
    groups, carried = [], ChannelGroup("stem", producers=[model.stem[0], model.stem[1]])
    for stage_index, stage in enumerate(model.stages):
        for block_index, block in enumerate(stage):
            name = f"stages.{stage_index}.{block_index}"
            if isinstance(block, BasicBlock):
                carried.consumers.append(block.conv1)
                groups.append(ChannelGroup(f"{name}.inner", [block.conv1, block.bn1], [block.conv2]))
                shortcut, out = _projection(block.shortcut), [block.conv2, block.bn2]
            else:  # a dropped block: nn.Identity, or the projection shortcut it was replaced by
                shortcut, out = _projection(block), []
            if shortcut is not None:
                carried.consumers.append(shortcut[0])
                groups.append(carried)
                carried = ChannelGroup(name, producers=[shortcut[0], shortcut[1]])
            carried.producers += out
    carried.consumers.append(model.head[-1])
    return [*groups, carried]


# --- channel importance (``sec-prune-structured-criteria``) ------------------------------------


def _filter_norms(group: ChannelGroup, p: int) -> torch.Tensor:
    convs = [m for m in group.producers if isinstance(m, nn.Conv2d)]
    return sum(m.weight.detach().flatten(1).norm(p=p, dim=1) for m in convs)


def _bn_scales(group: ChannelGroup) -> torch.Tensor:
    return sum(m.weight.detach().abs() for m in group.producers if isinstance(m, nn.BatchNorm2d))


def _taylor(model: nn.Module, groups: list[ChannelGroup], batches: Iterable) -> list[torch.Tensor]:
    """(Σ_channel w·∂L/∂w)² over each channel's producer parameters, summed over batches (Molchanov et al., 2019)."""
    scores = [torch.zeros(g.size) for g in groups]
    dev = next(model.parameters()).device
    model.eval()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
        for score, group in zip(scores, groups, strict=True):
            change = sum((m.weight * m.weight.grad).reshape(group.size, -1).sum(1) for m in group.producers)
            change = change + sum(m.bias * m.bias.grad for m in group.producers if isinstance(m, nn.BatchNorm2d))
            score += change.detach().cpu().pow(2)
    model.zero_grad(set_to_none=True)
    return scores


def channel_scores(model: ResNet, criterion: str = "l1", batches: Iterable | None = None) -> list[torch.Tensor]:
    """One importance per channel of each group of :func:`resnet_groups`, summed over the group's producers.

    ``l1`` / ``l2``: filter norms (Li et al., 2017); ``bn``: |γ| (network slimming, Liu et al., 2017);
    ``taylor``: the first-order loss change of removing the channel (needs ``batches``).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    groups = resnet_groups(model)
    if criterion == "taylor":
        if batches is None:
            raise ValueError("batches must be given for criterion='taylor'")
        return _taylor(model, groups, batches)
    if criterion == "bn":
        return [_bn_scales(g).cpu() for g in groups]
    return [_filter_norms(g, 1 if criterion == "l1" else 2).cpu() for g in groups]


# --- removing channels ------------------------------------------------------------------------


def _slice(param: torch.Tensor, index: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, index.to(param.device)).clone())


@torch.no_grad()
def _keep_outputs(module: Producer, index: torch.Tensor) -> None:
    module.weight = _slice(module.weight, index, 0)
    if module.bias is not None:
        module.bias = _slice(module.bias, index, 0)
    if isinstance(module, nn.BatchNorm2d):
        module.running_mean = module.running_mean[index.to(module.running_mean.device)]
        module.running_var = module.running_var[index.to(module.running_var.device)]
        module.num_features = len(index)
    else:
        module.out_channels = len(index)


@torch.no_grad()
def _keep_inputs(module: Consumer, index: torch.Tensor) -> None:
    module.weight = _slice(module.weight, index, 1)
    if isinstance(module, nn.Linear):
        module.in_features = len(index)
    else:
        module.in_channels = len(index)


def keep_channels_(group: ChannelGroup, index: torch.Tensor) -> None:
    """Physically keep only channels ``index`` of ``group`` in every producer and consumer."""
    index = torch.as_tensor(index).sort().values
    if index.numel() == 0 or index.min() < 0 or index.max() >= group.size:
        raise ValueError(f"index must be non-empty and within [0, {group.size}) for group {group.name!r}")
    for module in group.producers:
        _keep_outputs(module, index)
    for module in group.consumers:
        _keep_inputs(module, index)


def prune_channels_(model: ResNet, ratio: float, criterion: str = "l1", batches: Iterable | None = None,
                    round_to: int = 1) -> ResNet:  # fmt: skip
    """Remove the fraction ``ratio`` of channels of every group (the least important by ``criterion``), in place.

    ``round_to`` rounds each group's surviving channel count to a multiple (CPU and GPU kernels are
    fastest on multiples of 8 or 16; ``sec-prune-structured-criteria`` measures it).
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if round_to <= 0:
        raise ValueError(f"round_to must be positive, got {round_to}")
    scores = channel_scores(model, criterion, batches)
    for group, score in zip(resnet_groups(model), scores, strict=True):
        keep = min(group.size, max(round_to, round_to * round(group.size * (1 - ratio) / round_to)))
        keep_channels_(group, score.topk(keep).indices)
    return model


# --- removing residual blocks (``sec-prune-structured-blocks``) -------------------------------


def residual_blocks(model: ResNet) -> list[str]:
    """Names of the :class:`~effdl.models.BasicBlock` s still in ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, BasicBlock)]


def drop_block_(model: ResNet, name: str) -> ResNet:
    """Replace block ``name`` by its shortcut: identity, or the 1x1 projection that keeps shapes valid."""
    blocks = residual_blocks(model)
    if name not in blocks:
        raise ValueError(f"name must be one of {blocks}, got {name!r}")
    block = model.get_submodule(name)
    stage, index = name.rsplit(".", 1)
    replacement = block.shortcut if _projection(block.shortcut) is not None else nn.Identity()
    model.get_submodule(stage)[int(index)] = replacement
    return model


@torch.no_grad()
def block_drop_losses(model: ResNet, batches: list) -> dict[str, float]:
    """Mean loss on ``batches`` with each residual block dropped alone: the block's importance."""
    return {name: evaluate(drop_block_(copy.deepcopy(model), name), batches)["loss"] for name in residual_blocks(model)}


# --- the production path: Torch-Pruning (``sec-prune-structured-headline``) ------------------


def torch_pruning_channels(model: nn.Module, example: torch.Tensor, ratio: float, round_to: int = 1) -> nn.Module:
    """A pruned copy of ``model`` from Torch-Pruning (DepGraph, Fang et al., 2023): the same L1 filter
    criterion, the same ``ratio`` per group, dependencies found by tracing instead of by hand.

    The classifier's outputs are kept (``ignored_layers``); its inputs are pruned with the last stage;
    ``round_to`` has the meaning of :func:`prune_channels_`'s.
    """
    import torch_pruning as tp

    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    pruned = copy.deepcopy(model).cpu().eval()
    head = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(pruned, example.cpu(), importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[head], round_to=round_to)  # fmt: skip
    pruner.step()
    return pruned
