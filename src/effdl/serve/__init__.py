"""``effdl.serve``: the book's models behind an HTTP API (``chap-serve``).

- :mod:`~effdl.serve.app`: :func:`create_app`, an OpenAI-compatible FastAPI app and a classifier (``sec-serve-api``)
- :mod:`~effdl.serve.schemas`: the request and response bodies, validated by pydantic
- :mod:`~effdl.serve.text`: tokenizers and chat templates, text streamed token by token
- :mod:`~effdl.serve.continuous`: continuous batching for requests that arrive online (``sec-serve-batching``)
- :mod:`~effdl.serve.dynamic`: dynamic batching for the classifier (``sec-serve-batching``)
- :mod:`~effdl.serve.limits`: limits, their errors (400, 413, 429, 504) and a generic 500 (``sec-serve-limits``)
- :mod:`~effdl.serve.metrics`: Prometheus metrics (``sec-serve-metrics``)
- :mod:`~effdl.serve.load`: a load generator: latency, time to first token, lost requests (``sec-serve-load``)
- :mod:`~effdl.serve.launch`: servers as subprocesses on free ports, always stopped (``sec-serve-api``)

``python -m effdl.serve`` serves SmolLM2 or the Shakespeare GPT and a Fashion-MNIST classifier.
"""

from effdl.serve import app, continuous, dynamic, launch, limits, load, metrics, schemas, text
from effdl.serve.app import ImageModel, TextModel, create_app
from effdl.serve.continuous import OnlineBatcher
from effdl.serve.dynamic import DynamicBatcher
from effdl.serve.limits import Limits
from effdl.serve.load import LoadReport, run_load

__all__ = [
    "DynamicBatcher",
    "ImageModel",
    "Limits",
    "LoadReport",
    "OnlineBatcher",
    "TextModel",
    "app",
    "continuous",
    "create_app",
    "dynamic",
    "launch",
    "limits",
    "load",
    "metrics",
    "run_load",
    "schemas",
    "text",
]
