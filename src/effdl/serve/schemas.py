"""The bodies the server reads and writes (``sec-serve-api``): OpenAI's chat and text completions (the fields this
server supports; others are ignored), their streamed chunks, and the classifier's request and answer. Pydantic
validates every request, so a malformed one is a 422 that names the field, before any model sees it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

IMAGE_SIDE = 28


def _whole(number: object) -> object:
    """``2.0`` as ``2``: JSON Schema counts a number with no fraction as an integer."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


Count = Annotated[int, Field(ge=1), BeforeValidator(_whole)]
PIXEL_BOUND = 1e4  # far beyond any image's scale, small enough that no float32 forward pass overflows
Pixel = Annotated[float, Field(ge=-PIXEL_BOUND, le=PIXEL_BOUND, allow_inf_nan=False)]


class Body(BaseModel):
    """A request body: strict types, so ``0`` is no boolean and ``"1"`` no number, as the schema says."""

    model_config = ConfigDict(strict=True)


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """The generation settings both completion endpoints share. ``temperature`` defaults to 0 (greedy), the only
    value the batched backends decode with; ``model`` is echoed, not checked (one model is served)."""

    model: str = ""
    max_tokens: Count | None = Field(None, description="new tokens at most; the server's limit if omitted")
    temperature: float = Field(0.0, ge=0, le=2)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="up to 4 strings that end the reply (left out of it)"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        """Whether a stream's last chunk reports the usage."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A text completion, and (with ``usage`` left out until the end) each of its streamed chunks."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "effdl"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


Row = Annotated[list[Pixel], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]


class ClassifyRequest(Body):
    """One 28x28 grey image, as 28 rows of 28 pixels or 784 pixels in row order, on the scale the model reads
    (the book's classifiers: [0, 1]), each within ``PIXEL_BOUND``."""

    image: (Annotated[list[Row], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]
            | Annotated[list[Pixel], Field(min_length=IMAGE_SIDE**2, max_length=IMAGE_SIDE**2)])  # fmt: skip


class Classification(BaseModel):
    model: str
    label: int
    class_name: str | None
    probabilities: list[float]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    generator: str | None
    classifier: str | None
