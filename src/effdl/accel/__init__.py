"""``effdl.accel``: using the machine well, for any model and any data.

- :mod:`~effdl.accel.devices`: which accelerators PyTorch exposes here, and what wrong device names raise
- :mod:`~effdl.accel.profile`: a training step under ``torch.profiler``: its top operators and a trace for Perfetto
- :mod:`~effdl.accel.steps`: one training step (optionally under autocast with a gradient scaler), gradient
  accumulation, and what fp16 does to small gradients
- :mod:`~effdl.accel.memory`: activation checkpointing of a model's blocks
- :mod:`~effdl.accel.compile`: graph breaks found with ``torch._dynamo.explain``, and a cold compile cache
- :mod:`~effdl.accel.loader`: a dataset that decodes and augments each example, and a loader's throughput
- :mod:`~effdl.accel.graphs`: a forward pass captured as a CUDA graph (GPU only)
"""

from effdl.accel import compile, devices, graphs, loader, memory, profile, steps
from effdl.accel.compile import GraphReport, fresh_compile_cache, graph_breaks
from effdl.accel.devices import accelerators, raised
from effdl.accel.loader import DecodingDataset, loader_throughput
from effdl.accel.memory import Checkpointed, checkpoint_blocks
from effdl.accel.profile import OpTime, op_table, profile_steps, share_of
from effdl.accel.steps import Underflow, accumulate_gradients, fp16_underflow, train_step

__all__ = [
    "Checkpointed", "DecodingDataset", "GraphReport", "OpTime", "Underflow", "accelerators",
    "accumulate_gradients", "checkpoint_blocks", "compile", "devices", "fp16_underflow", "fresh_compile_cache",
    "graph_breaks", "graphs", "loader", "loader_throughput", "memory", "op_table", "profile", "profile_steps",
    "raised", "share_of", "steps", "train_step",
]  # fmt: skip
