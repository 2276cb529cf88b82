"""The devices PyTorch really exposes (``sec-hw-devices``), and the errors that made-up device names raise
(``sec-hw-pitfalls``).

PyTorch names a device by its backend: ``cpu``, ``cuda`` (NVIDIA GPUs, and AMD GPUs through ROCm, which reuses the
name), ``mps`` (Apple GPUs), ``xpu`` (Intel GPUs); ``meta`` holds shapes without data. TPUs are reached through
the separate ``torch_xla`` package, whose device is ``xla``. There is no ``gpu`` and no ``tpu`` device.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def accelerators() -> dict[str, str]:
    """What this process can use, backend by backend: a short description, or why not."""
    found = {"cpu": f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"}
    found["cuda"] = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
                     else "not available (no NVIDIA or AMD GPU, or a CPU-only build)")  # fmt: skip
    found["mps"] = "available" if _mps_available() else "not available (Apple silicon only)"
    found["xpu"] = f"{torch.xpu.device_count()} device(s)" if _xpu_available() else "not available (Intel GPUs)"
    has_xla = importlib.util.find_spec("torch_xla") is not None
    found["xla"] = "torch_xla installed" if has_xla else "not installed (TPUs need the torch_xla package)"
    return found


def raised(fn: Callable[[], Any]) -> str:
    """The first line of the error ``fn()`` raises, as ``TypeName: message``; ``"no error"`` if it returns."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 -- the point is to show whatever it raises
        message = str(err).strip().splitlines()
        return f"{type(err).__name__}: {message[0] if message else ''}"
    return "no error"
