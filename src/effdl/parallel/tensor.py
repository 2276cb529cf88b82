"""Tensor parallelism on the book's GPT, Megatron-style, with ``parallelize_module`` (``sec-parallel-tp``).

In each transformer block the MLP's first Linear is split by output columns (``ColwiseParallel``: each rank
computes a slice of the hidden units from the whole input) and its second by input rows (``RowwiseParallel``: each
rank multiplies its slice, then one all-reduce sums the partial outputs). Attention is split by heads the same
way: the fused q/k/v projection column-wise, so each rank computes its own heads' queries, keys and values, and
the output projection row-wise. That is two all-reduces per block in the forward pass (two more in the backward).

The fused q/k/v weight stores all queries, then all keys, then all values; a contiguous column split would give
rank 0 every query and no key. :func:`parallelize_gpt` re-lays its rows per rank (rank r's queries, keys, values)
before splitting, and :func:`dense_state_dict` gathers the shards and undoes it, so a saved checkpoint keeps the
dense model's layout.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from effdl.models import GPT, CausalSelfAttention
from effdl.parallel.group import worker_device, world

BLOCK_PLAN = {"attn.qkv": ColwiseParallel(), "attn.proj": RowwiseParallel(),
              "mlp.0": ColwiseParallel(), "mlp.2": RowwiseParallel()}  # fmt: skip


def qkv_order(n_embd: int, n_head: int, n_kv_head: int, ranks: int) -> torch.Tensor:
    """Row order of the fused q/k/v weight that puts rank r's query, key and value rows side by side, so that a
    contiguous split into ``ranks`` parts gives each rank whole heads (``ValueError`` unless heads divide)."""
    if n_head % ranks or n_kv_head % ranks:
        raise ValueError(f"ranks ({ranks}) must divide n_head ({n_head}) and n_kv_head ({n_kv_head})")
    head = n_embd // n_head
    q, k, v = torch.arange(n_embd), torch.arange(n_kv_head * head) + n_embd, torch.arange(n_kv_head * head)
    v = v + n_embd + n_kv_head * head
    return torch.cat([torch.cat([part.chunk(ranks)[r] for part in (q, k, v)]) for r in range(ranks)])


class HeadShardedAttention(CausalSelfAttention):
    """Causal self-attention over this rank's heads: ``qkv`` yields its heads' queries, keys and values (rows
    re-laid by :func:`qkv_order`), ``proj`` (row-parallel) sums every rank's partial output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        head = self.kv_width // self.n_kv_head
        q, k, v = self.qkv(x).split([self.n_head * head, self.kv_width, self.kv_width], dim=-1)
        q, k, v = (z.view(b, t, -1, head).transpose(1, 2) for z in (q, k, v))
        grouped = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop, **grouped)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


def parallelize_gpt(model: GPT, mesh: DeviceMesh | None = None) -> GPT:
    """Split every block of ``model`` (in place) over the ranks of ``mesh`` (default: all of them): MLP and
    attention as the module's docstring says; embeddings, layer norms and the output layer stay replicated."""
    mesh = mesh or init_device_mesh(worker_device().type, (world(),))
    ranks, cfg = mesh.size(), model.cfg
    order = qkv_order(cfg.n_embd, cfg.n_head, cfg.kv_heads, ranks)
    for block in model.blocks:
        attn = block.attn
        with torch.no_grad():
            attn.qkv.weight.copy_(attn.qkv.weight[order])
            attn.qkv.bias.copy_(attn.qkv.bias[order])
        attn.__class__ = HeadShardedAttention
        attn.n_head, attn.n_kv_head = attn.n_head // ranks, attn.n_kv_head // ranks
        attn.kv_width //= ranks
        attn.qkv_order = order
        parallelize_module(block, mesh, BLOCK_PLAN)
    return model


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the dense model: every shard gathered (``full_tensor``) and the q/k/v rows put back in
    the dense order."""
    state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, HeadShardedAttention):
            inverse = torch.argsort(module.qkv_order)
            for kind in ("weight", "bias"):
                state[f"{name}.qkv.{kind}"] = state[f"{name}.qkv.{kind}"][inverse]
    return state


class CommCounter(CommDebugMode):
    """``CommDebugMode`` that also adds up the bytes of the tensors the collectives send."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.get_total_counts()
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.get_total_counts() > before and isinstance(args[0], torch.Tensor):
            self.bytes += args[0].numel() * args[0].element_size()
        return out


def tp_versus_dense(model: GPT, idx: torch.Tensor) -> dict:
    """Parallelize a copy of ``model`` over all ranks and compare it with the dense model on token ids ``idx``:
    the largest output difference, the collectives of one forward and one backward pass (counted with
    ``CommDebugMode``) and their bytes, and whether the gathered checkpoint equals the dense one."""
    dense = model.eval()
    tp = parallelize_gpt(copy.deepcopy(model)).eval()
    with torch.no_grad():
        expected = dense(idx)
    with CommCounter() as forward:
        logits = tp(idx)
    with CommCounter() as backward:
        logits.sum().backward()
    state, reference = dense_state_dict(tp), dense.state_dict()
    return {"max_difference": (logits.detach() - expected).abs().max().item(),
            "forward": {str(k): n for k, n in forward.get_comm_counts().items()},
            "backward": {str(k): n for k, n in backward.get_comm_counts().items()},
            "forward_bytes": forward.bytes, "backward_bytes": backward.bytes, "blocks": len(model.blocks),
            "checkpoint_equal": all(torch.equal(state[k], reference[k]) for k in reference),
            "local_parameter_bytes": sum(p.to_local().numel() * p.element_size() if isinstance(p, DTensor)
                                         else p.numel() * p.element_size() for p in tp.parameters()),
            "dense_parameter_bytes": sum(p.numel() * p.element_size() for p in dense.parameters())}  # fmt: skip
