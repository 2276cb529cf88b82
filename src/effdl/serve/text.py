"""From text to tokens and back for the server (``sec-serve-api``).

A codec turns a completion prompt or a chat's messages into token ids and ids into text; it knows the token that
ends a reply, if the model has one. :class:`HFCodec` wraps a Hugging Face tokenizer and its chat template
(SmolLM2's); :class:`CharCodec` wraps the book's character tokenizer, whose model has no chat template, so a
chat's messages are joined plainly, one per line. :class:`Detokenizer` turns tokens into text as they stream.
"""

from __future__ import annotations

from typing import Protocol

from effdl.serve.schemas import ChatMessage


class Codec(Protocol):
    """What the server needs of a tokenizer."""

    eos: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def chat(self, messages: list[ChatMessage]) -> list[int]: ...


class CharCodec:
    """The book's character tokenizer (``encode(text) -> tensor``, ``decode(ids) -> str``); no end-of-text token.
    A character outside its vocabulary is a ``ValueError``."""

    eos = None

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).tolist()

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        return self.encode("".join(f"{m.content}\n" for m in messages))


class HFCodec:
    """A Hugging Face tokenizer: chats through its chat template (with the prompt of the assistant's turn), replies
    ended by its end-of-sequence token, special tokens left out of the text."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.eos = tokenizer, tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def chat(self, messages: list[ChatMessage]) -> list[int]:
        turns = [m.model_dump() for m in messages]
        return self.encode(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))


def codec_for(tokenizer) -> Codec:
    """:class:`HFCodec` for a tokenizer with a chat template, else :class:`CharCodec`."""
    return HFCodec(tokenizer) if hasattr(tokenizer, "apply_chat_template") else CharCodec(tokenizer)


class Detokenizer:
    """A reply's text as its tokens arrive: each :meth:`push` decodes all tokens so far and returns the new text,
    holding back an unfinished character (a trailing U+FFFD) and any tail that may start one of ``stops``; the
    text ends before the first stop string, after which :attr:`stopped` is set."""

    def __init__(self, codec: Codec, stops: list[str]) -> None:
        self.codec, self.stops = codec, [s for s in stops if s]
        self.tokens: list[int] = []
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, token: int) -> str:
        """The text that ``token`` completes."""
        self.tokens.append(token)
        self.text = self.codec.decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self.flush()
        if self.text.endswith("\ufffd"):
            return ""
        return self._send(len(self.text) - self._stop_prefix())

    def flush(self) -> str:
        """The text held back, at the end of the reply."""
        return self._send(len(self.text))

    def _stop_prefix(self) -> int:
        """Length of the longest end of the text that begins a stop string."""
        return max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)

    def _send(self, end: int) -> str:
        delta = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return delta
