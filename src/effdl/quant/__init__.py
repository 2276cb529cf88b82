"""``effdl.quant``: quantization from number formats to 4-bit LLMs (``chap-quant-basics``, ``chap-quant-cnn``,
``chap-quant-llm``).

- :mod:`~effdl.quant.core`: grids, scales, zero-points, rounding, fake-quantization (``chap-quant-basics``)
- :mod:`~effdl.quant.observers`: range choice from data: min-max, moving average, percentile, MSE
- :mod:`~effdl.quant.pack`: packing 1/2/4-bit codes into bytes
- :mod:`~effdl.quant.layers`: STE, LSQ, ternary/binary weights, quantized layers, BN folding (``chap-quant-cnn``)
- :mod:`~effdl.quant.model`: ``quantize_model``, calibration, bytes, a real int8 CPU engine (QAT: ``sec-quant-cnn-qat``)
- :mod:`~effdl.quant.llm`: perplexity, RTN, GPTQ, outliers, SmoothQuant, int8 kernels (``chap-quant-llm``)
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
