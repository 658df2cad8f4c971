"""Byte-level UTF-8 tokenizer: one token per byte, vocabulary of 256.

Any text round-trips losslessly (accents, em dashes, emoji are several bytes each).
A model can emit byte sequences that are not valid UTF-8 (a multi-byte character cut
in half); decoding replaces those with U+FFFD instead of raising, and
:meth:`ByteTokenizer.stream_decoder` holds back an incomplete character until its
last byte arrives, so streamed text never shows half a character.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

import torch


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}; decode bytes first")
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The text as a (1, n_bytes) long tensor, ready for ``Transformer.generate``."""
        return torch.tensor([self.encode(text)], dtype=torch.long, device=device)

    def decode(self, ids: Iterable[int] | torch.Tensor | bytes) -> str:
        return self._to_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder()

    @staticmethod
    def _to_bytes(ids: Iterable[int] | torch.Tensor | bytes) -> bytes:
        if isinstance(ids, (bytes, bytearray)):
            return bytes(ids)
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        values = list(ids)
        bad = [v for v in values if not 0 <= int(v) < 256]
        if bad:
            raise ValueError(f"token ids must be bytes in 0..255, got {bad[:5]}")
        return bytes(int(v) for v in values)


class StreamDecoder:
    """Incremental UTF-8 decoding for streamed generation."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int] | torch.Tensor | bytes) -> str:
        """Text completed by these bytes (an unfinished character is held back)."""
        return self._decoder.decode(ByteTokenizer._to_bytes(ids))

    def flush(self) -> str:
        """Whatever is held back, with an unfinished character shown as U+FFFD."""
        return self._decoder.decode(b"", final=True)
