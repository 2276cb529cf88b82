"""What the server measures about itself, in Prometheus's text format at ``GET /metrics`` (``sec-serve-metrics``).

Requests by route and status, their latency (for a stream, until its last byte), the requests waiting per queue,
the batch sizes the schedulers ran, the seconds each classifier forward pass took and the tokens generated. Each
app has its own registry, so two servers in one process (a test's) keep their counts apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MODEL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("effdl_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("effdl_request_seconds", "Time from request to the response's last byte, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.queue_depth = Gauge("effdl_queue_depth", "Requests waiting to be scheduled, by queue", ["queue"],
                                 registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("effdl_batch_size", "Rows per generation step or images per classifier forward",
                                    ["queue"], buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.model_seconds = Histogram("effdl_model_seconds", "Seconds of one classifier forward pass (one batch)",
                                       ["queue"], buckets=MODEL_BUCKETS, registry=self.registry)  # fmt: skip
        self.tokens = Counter("effdl_tokens_generated", "Tokens the generator made, read by a client or not",
                              registry=self.registry)  # fmt: skip

    def watch_queue(self, queue: str, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as the depth of ``queue`` at every scrape."""
        self.queue_depth.labels(queue).set_function(depth)

    def generation_step(self, tokens: int) -> None:
        """One step of the generator made ``tokens`` tokens, one per row it ran."""
        self.batch_size.labels("generate").observe(tokens)
        self.tokens.inc(tokens)

    def classifier_batch(self, images: int, seconds: float) -> None:
        """One classifier forward pass ran ``images`` images in ``seconds``."""
        self.batch_size.labels("classify").observe(images)
        self.model_seconds.labels("classify").observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route's path template (``unmatched`` for unknown paths, so that
    random URLs cannot grow the label set) and status; an exception counts as 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
