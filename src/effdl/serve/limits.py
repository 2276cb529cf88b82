"""What a server refuses, and how it says so (``sec-serve-limits``).

Every limit of :class:`Limits` is a number a client can hit: a full queue answers 429 with ``Retry-After``, a
prompt or ``max_tokens`` over its limit 400 with the limit in the message, a body over ``max_body_bytes`` 413, a
request that outlives ``timeout_s`` 504. Errors take OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, so its clients raise their own typed exceptions; an unexpected exception becomes a generic 500 whose
stack trace stays in the server's log.
"""

from __future__ import annotations

import dataclasses
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

log = logging.getLogger("effdl.serve")


@dataclasses.dataclass(frozen=True)
class Limits:
    """The server's knobs: rows decoded together and images per forward (``max_batch``), how long the classifier
    waits to fill a batch (``max_wait_ms``), requests waiting per model (``queue_size``), prompt and completion
    lengths, a per-request deadline and the largest request body."""

    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64
    max_prompt_tokens: int = 512
    max_tokens: int = 256
    timeout_s: float = 60.0
    max_body_bytes: int = 1 << 20
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"{field.name} must be positive, got {getattr(self, field.name)}")

    @property
    def token_budget(self) -> int:
        """Tokens one scheduler step may spend: enough for a full batch of decodes and the longest prompt, so that
        a prompt within the limit always fits once a row is free."""
        return self.max_batch + self.max_prompt_tokens


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class ApiError(Exception):
    """An error the client caused or must handle, sent as ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.headers = status, headers
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.detail).model_dump(), self.status, headers=self.headers)


def too_long(what: str, count: int, limit: int, param: str) -> ApiError:
    """400: ``what`` has ``count`` tokens, more than ``limit``."""
    return ApiError(400, f"{what} has {count} tokens, more than this server's limit of {limit}", param=param,
                    code="context_length_exceeded")  # fmt: skip


def queue_full(limits: Limits) -> ApiError:
    """429 with ``Retry-After``: the queue holds ``queue_size`` waiting requests already."""
    return ApiError(429, f"the server is busy: {limits.queue_size} requests are waiting; retry later",
                    type="server_busy", code="queue_full",
                    headers={"Retry-After": str(limits.retry_after_s)})  # fmt: skip


def timed_out(limits: Limits) -> ApiError:
    """504: the request outlived ``timeout_s``."""
    return ApiError(504, f"the request took longer than this server's timeout of {limits.timeout_s} s",
                    type="timeout", code="timeout")  # fmt: skip


def server_error() -> ApiError:
    """500, saying nothing of the cause (the trace goes to the server's log)."""
    return ApiError(500, "internal server error", type="server_error")


ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 429, 500, 504)} | {
    413: {"description": "the body is larger than `max_body_bytes` (Starlette's plain-text answer)",
          "content": {"text/plain": {}}},
}  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI-shaped bodies for :class:`ApiError` and for Starlette's HTTP errors (404, 405), and a generic
    500 for anything else, logged with its trace. FastAPI's own 422 names the invalid field and is kept."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return server_error().response()
