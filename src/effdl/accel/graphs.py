"""CUDA graphs (``sec-hw-gpu``): record a forward pass's kernel launches once and replay them with one call,
removing the CPU's launch overhead that dominates small models on a fast GPU. GPU only.

A graph replays fixed memory addresses: inputs are copied into a static tensor, and the output tensor is the
same one every replay (clone it to keep it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

WARMUP_CALLS = 3


def capture_forward(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that runs ``model`` on an input shaped like ``example`` by replaying a CUDA graph."""
    if example.device.type != "cuda":
        raise ValueError(f"example must be on a CUDA device, got {example.device}")
    static_input = example.clone()
    side = torch.cuda.Stream()  # warm up on a side stream, as capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(WARMUP_CALLS):
            model(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_output = model(static_input)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_input.copy_(x)
        graph.replay()
        return static_output

    return replay
