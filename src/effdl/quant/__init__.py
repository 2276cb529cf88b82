"""``effdl.quant``: quantization from number formats to 4-bit LLMs (Chapters 2 to 4).

- :mod:`~effdl.quant.core`: grids, scales, zero-points, rounding, fake-quantization (Chapter 2)
- :mod:`~effdl.quant.observers`: range choice from data: min-max, moving average, percentile, MSE
- :mod:`~effdl.quant.pack`: packing 1/2/4-bit codes into bytes
- :mod:`~effdl.quant.layers`: STE, LSQ, ternary/binary weights, quantized layers, BN folding (Chapter 3)
- :mod:`~effdl.quant.model`: ``quantize_model``, calibration, bytes, QAT, a real int8 CPU engine
- :mod:`~effdl.quant.llm`: perplexity, RTN, GPTQ, outliers, SmoothQuant, int8 kernels (Chapter 4)
"""

from effdl.quant import core, layers, llm, model, observers, pack
from effdl.quant.core import dequantize, fake_quantize, fixed_point, qparams, qrange, quantize, sqnr_db
from effdl.quant.model import QuantConfig, calibrate, quantize_model

__all__ = [
    "core",
    "layers",
    "llm",
    "model",
    "observers",
    "pack",
    "QuantConfig",
    "calibrate",
    "dequantize",
    "fake_quantize",
    "fixed_point",
    "qparams",
    "qrange",
    "quantize",
    "quantize_model",
    "sqnr_db",
]
