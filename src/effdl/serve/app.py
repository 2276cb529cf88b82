"""The HTTP server: an OpenAI-compatible text API and a classifier behind one FastAPI app (``sec-serve-api``).

:func:`create_app` takes the models and the :class:`~effdl.serve.limits.Limits`; uvicorn runs the app it returns.
``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent events when ``stream`` is
true) generate with continuous batching (:mod:`effdl.serve.continuous`), ``POST /v1/classify`` classifies with
dynamic batching (:mod:`effdl.serve.dynamic`); ``GET /v1/models``, ``GET /health`` and ``GET /metrics`` report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send
from torch import nn

from effdl.infer.batching import GPTRows, HFRows
from effdl.models import GPT
from effdl.serve.continuous import Job, OnlineBatcher, QueueFull
from effdl.serve.dynamic import DynamicBatcher
from effdl.serve.limits import (
    ERROR_RESPONSES,
    ApiError,
    ErrorResponse,
    Limits,
    install_error_handlers,
    log,
    queue_full,
    server_error,
    timed_out,
    too_long,
)
from effdl.serve.metrics import Metrics, MetricsMiddleware
from effdl.serve.schemas import (
    IMAGE_SIDE,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    Classification,
    ClassifyRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    Health,
    ModelCard,
    ModelList,
    Sampling,
    Usage,
)
from effdl.serve.text import Codec, Detokenizer, codec_for

STREAMED = {200: {"content": {"text/event-stream": {}},
                  "description": "the reply, or with `stream: true` its chunks as server-sent events"}}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TextModel:
    """A language model to serve as ``name``: the book's :class:`~effdl.models.GPT` with its character tokenizer, or
    a Hugging Face causal LM (SmolLM2) with its tokenizer and chat template."""

    name: str
    model: nn.Module
    tokenizer: Any


@dataclasses.dataclass(frozen=True)
class ImageModel:
    """A classifier of 28x28 grey images ``(batch, 1, 28, 28) -> logits`` to serve as ``name``, with the names of
    its classes if known."""

    name: str
    model: nn.Module
    classes: Sequence[str] | None = None


class Reply:
    """One generation request as it runs: its tokens turned into text deltas, within its deadline."""

    def __init__(self, job: Job, codec: Codec, stops: list[str], prompt_tokens: int, limits: Limits) -> None:
        self.job, self.codec, self.prompt_tokens, self.limits = job, codec, prompt_tokens, limits
        self.detokenizer = Detokenizer(codec, stops)
        self.deadline = asyncio.get_running_loop().time() + limits.timeout_s
        self.head: list[int | None] = []  # the first token, when a stream waited for it

    async def _token(self) -> int | None:
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self.job.next_token(), max(remaining, 0))
        except asyncio.TimeoutError:
            self.job.cancel()
            raise timed_out(self.limits) from None

    async def wait_first(self) -> None:
        """Wait for the first token: a stream sends its headers only then, so that a timeout is still a 504."""
        try:
            self.head.append(await self._token())
        except BaseException:
            self.job.cancel()
            raise

    async def deltas(self) -> AsyncIterator[str]:
        """The reply's text, piece by piece; the request leaves the batch when this ends, however it ends."""
        try:
            token = self.head.pop() if self.head else await self._token()
            while token is not None and not self.detokenizer.stopped:
                if delta := self.detokenizer.push(token):
                    yield delta
                token = None if self.detokenizer.stopped else await self._token()
            if tail := self.detokenizer.flush():
                yield tail
        finally:
            self.job.cancel()

    async def text(self) -> str:
        return "".join([delta async for delta in self.deltas()])

    def finish_reason(self) -> str:
        ended = self.codec.eos is not None and self.job.tokens[-1:] == [self.codec.eos]
        return "stop" if self.detokenizer.stopped or ended else "length"

    def usage(self) -> Usage:
        completion = len(self.job.tokens)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                     total_tokens=self.prompt_tokens + completion)  # fmt: skip


class Generation:
    """The text side of the server: checks a request against the limits, queues it on the batcher."""

    def __init__(self, served: TextModel, limits: Limits, metrics: Metrics) -> None:
        self.name, self.limits = served.name, limits
        self.codec = codec_for(served.tokenizer)
        rows = GPTRows(served.model, limits.max_batch) if isinstance(served.model, GPT) else HFRows(served.model)
        self.context = rows.cache.max_tokens if isinstance(rows, GPTRows) else rows.context
        self.batcher = OnlineBatcher(rows, limits.max_batch, limits.token_budget, limits.queue_size,
                                     on_step=metrics.generation_step)  # fmt: skip
        metrics.watch_queue("generate", lambda: len(self.batcher.waiting))

    def start(self, body: Sampling, encode: Callable[[], list[int]], param: str) -> Reply:
        """Tokenize with ``encode()`` and queue ``body``'s request; a 4xx :class:`ApiError` naming ``param`` (the
        prompt's field) or the setting at fault when a limit refuses it."""
        if body.temperature > 0:
            raise ApiError(400, "temperature > 0 is not supported: this server decodes greedily; use temperature=0",
                           param="temperature")  # fmt: skip
        try:
            prompt = encode()
        except ValueError as exc:
            raise ApiError(400, f"{param}: {exc}", param=param) from None
        if not prompt:
            raise ApiError(400, f"{param} has no tokens", param=param)
        if len(prompt) > self.limits.max_prompt_tokens:
            raise too_long(f"the {param}", len(prompt), self.limits.max_prompt_tokens, param)
        if body.max_tokens is not None and body.max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"max_tokens is {body.max_tokens}, more than this server's limit of "
                           f"{self.limits.max_tokens}", param="max_tokens")  # fmt: skip
        new_tokens = body.max_tokens or max(1, min(self.limits.max_tokens, self.context - len(prompt)))
        try:
            job = self.batcher.submit(prompt, new_tokens, stop=self.codec.eos)
        except QueueFull:
            raise queue_full(self.limits) from None
        except ValueError as exc:
            raise ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
        return Reply(job, self.codec, body.stops(), len(prompt), self.limits)


class EventStream(StreamingResponse):
    """Server-sent events that call ``on_close()`` when the response ends, however it ends (a client that leaves
    ends it at the next send): there, the request it streams leaves the batch at once."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _events(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    """``chunks`` as ``data:`` events, then ``data: [DONE]``; an error after the headers went out is an error
    event (OpenAI's body) instead of the end."""
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
    except ApiError as exc:
        yield f"data: {ErrorResponse(error=exc.detail).model_dump_json()}\n\n"
        return
    except Exception:
        log.exception("stream failed")
        yield f"data: {ErrorResponse(error=server_error().detail).model_dump_json()}\n\n"
        return
    yield "data: [DONE]\n\n"


async def _respond(reply: Reply, stream: bool, whole: Callable[[str], BaseModel],
                   chunks: Callable[[], AsyncIterator[BaseModel]]) -> BaseModel | EventStream:  # fmt: skip
    """``whole(text)`` (the complete answer) or, when ``stream``, the server-sent events of ``chunks()``."""
    if not stream:
        return whole(await reply.text())
    await reply.wait_first()
    return EventStream(_events(chunks()), on_close=reply.job.cancel)


def _text_routes(app: FastAPI, generation: Generation) -> None:
    name = generation.name

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name)])

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERROR_RESPONSES | STREAMED)
    async def chat(body: ChatRequest) -> Any:
        reply = generation.start(body, lambda: generation.codec.chat(body.messages), "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}

        def whole(text: str) -> ChatCompletion:
            message = ChatMessage(role="assistant", content=text)
            choice = ChatChoice(message=message, finish_reason=reply.finish_reason())
            return ChatCompletion(**head, choices=[choice], usage=reply.usage())

        async def chunks() -> AsyncIterator[BaseModel]:
            yield ChatCompletionChunk(**head, choices=[ChatChunkChoice(delta=Delta(role="assistant", content=""))])
            async for text in reply.deltas():
                yield ChatCompletionChunk(**head, choices=[ChatChunkChoice(delta=Delta(content=text))])
            last = ChatChunkChoice(delta=Delta(), finish_reason=reply.finish_reason())
            yield ChatCompletionChunk(**head, choices=[last], usage=reply.usage() if body.include_usage() else None)

        return await _respond(reply, body.stream, whole, chunks)

    @app.post("/v1/completions", response_model=Completion, responses=ERROR_RESPONSES | STREAMED)
    async def complete(body: CompletionRequest) -> Any:
        reply = generation.start(body, lambda: generation.codec.encode(body.prompt), "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}

        def whole(text: str) -> Completion:
            choice = CompletionChoice(text=text, finish_reason=reply.finish_reason())
            return Completion(**head, choices=[choice], usage=reply.usage())

        async def chunks() -> AsyncIterator[BaseModel]:
            async for text in reply.deltas():
                yield Completion(**head, choices=[CompletionChoice(text=text)])
            last = CompletionChoice(text="", finish_reason=reply.finish_reason())
            yield Completion(**head, choices=[last], usage=reply.usage() if body.include_usage() else None)

        return await _respond(reply, body.stream, whole, chunks)


def _classifier_routes(app: FastAPI, served: ImageModel, batcher: DynamicBatcher, limits: Limits) -> None:
    @app.post("/v1/classify", response_model=Classification, responses=ERROR_RESPONSES)
    async def classify(body: ClassifyRequest) -> Classification:
        image = torch.tensor(body.image, dtype=torch.float32).view(1, IMAGE_SIDE, IMAGE_SIDE)
        try:
            probabilities = await asyncio.wait_for(batcher.submit(image), limits.timeout_s)
        except asyncio.QueueFull:
            raise queue_full(limits) from None
        except asyncio.TimeoutError:
            raise timed_out(limits) from None
        label = int(probabilities.argmax())
        return Classification(model=served.name, label=label, probabilities=probabilities.tolist(),
                              class_name=served.classes[label] if served.classes else None)  # fmt: skip


def create_app(generator: TextModel | None = None, classifier: ImageModel | None = None,
               limits: Limits | None = None) -> FastAPI:  # fmt: skip
    """The server of ``generator`` (the text routes) and ``classifier`` (``/v1/classify``), either may be left out,
    under ``limits`` (:class:`Limits`' defaults if ``None``). Its schedulers start with the app's lifespan and stop
    after uvicorn has finished the requests it accepted. ``app.state`` holds ``generation`` (its ``batcher``),
    ``classifier_batcher`` and ``metrics``."""
    limits = limits or Limits()
    metrics = Metrics()
    generation = Generation(generator, limits, metrics) if generator else None
    batcher = None
    if classifier:
        model = classifier.model.eval()
        batcher = DynamicBatcher(lambda images: model(images).softmax(-1), limits.max_batch, limits.max_wait_ms,
                                 limits.queue_size, on_batch=metrics.classifier_batch)  # fmt: skip
        metrics.watch_queue("classify", batcher.queue.qsize)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if generation:
            generation.batcher.start()
        if batcher:
            batcher.start()
        yield
        if batcher:
            await batcher.stop()
        if generation:
            await asyncio.to_thread(generation.batcher.stop)

    app = FastAPI(title="effdl.serve", summary="The book's models behind an OpenAI-compatible API",
                  lifespan=lifespan, max_body_size=limits.max_body_bytes)  # fmt: skip
    app.state.generation, app.state.classifier_batcher, app.state.metrics = generation, batcher, metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(
            generator=generator.name if generator else None, classifier=classifier.name if classifier else None
        )

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if generation:
        _text_routes(app, generation)
    if batcher:
        _classifier_routes(app, classifier, batcher, limits)
    return app
