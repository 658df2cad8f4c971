"""Tokenizers: bytes (one token per UTF-8 byte, vocabulary 256) and byte-level BPE.

Both are lossless on any text: every token stands for a fixed string of bytes (its
*piece*), and a text's tokens' pieces joined are its UTF-8 bytes. A model can emit byte
sequences that are not valid UTF-8 (a multi-byte character cut in half); decoding
replaces those with U+FFFD instead of raising, and ``stream_decoder()`` holds back an
incomplete character until its last byte arrives, so streamed text never shows half a
character, whether a token holds part of a character or several.

:class:`BPETokenizer` is trained with Hugging Face ``tokenizers`` (byte-level BPE over
GPT-4's split pattern, :data:`SPLIT_PATTERN`: words, numbers of up to 3 digits,
punctuation runs and whitespace are pre-tokenized apart and never merged across). Every
single byte is one of its tokens (not at its own id: ids follow the library's order), so
any byte sequence has an encoding.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

import numpy as np
import torch


TOKENIZERS = ("bytes", "bpe")
MIN_BPE_VOCAB = 257  # the 256 bytes and at least one merge
# GPT-4's (cl100k) split pattern in the form the tokenizers library's regex engine takes (as Llama 3's tokenizer.json)
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class Tokenizer:
    """What every tokenizer has: ``name``, ``vocab_size``, ``pieces`` (the bytes each token
    stands for), ``unit`` (what messages call a token), ``encode`` and ``to_bytes``."""

    name: str
    vocab_size: int
    pieces: list[bytes]
    unit = "token"

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_tensor(self, text: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The text as a (1, n_tokens) long tensor, ready for ``Transformer.generate``."""
        return torch.tensor([self.encode(text)], dtype=torch.long, device=device)


class ByteTokenizer(Tokenizer):
    name = "bytes"
    unit = "byte"
    vocab_size = 256
    pieces = [bytes([i]) for i in range(256)]  # the bytes each token stands for

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}; decode bytes first")
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """The text's ids as a read-only uint8 array, straight from UTF-8 (no list of ints per byte)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Iterable[int] | torch.Tensor | bytes) -> str:
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder()

    @staticmethod
    def to_bytes(ids: Iterable[int] | torch.Tensor | np.ndarray | bytes) -> bytes:
        """The bytes the ids stand for (a split file's uint8 array converts without a copy per byte)."""
        if isinstance(ids, (bytes, bytearray)):
            return bytes(ids)
        if isinstance(ids, np.ndarray) and ids.dtype == np.uint8:
            return ids.tobytes()
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        values = list(ids)
        bad = [v for v in values if not 0 <= int(v) < 256]
        if bad:
            raise ValueError(f"token ids must be bytes in 0..255, got {bad[:5]}")
        return bytes(int(v) for v in values)


class StreamDecoder:
    """Incremental UTF-8 decoding for streamed generation; ``to_bytes`` turns token ids into their bytes."""

    def __init__(self, to_bytes=None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._to_bytes = to_bytes or ByteTokenizer.to_bytes

    def feed(self, ids: Iterable[int] | torch.Tensor | bytes) -> str:
        """Text completed by these tokens (an unfinished character is held back)."""
        return self._decoder.decode(self._to_bytes(ids))

    def flush(self) -> str:
        """Whatever is held back, with an unfinished character shown as U+FFFD."""
        return self._decoder.decode(b"", final=True)


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character table, the one byte-level BPE writes its tokens in.

    Printable bytes map to themselves; the others (controls, space, some Latin-1) to
    characters from U+0100 upwards, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def check_bpe_vocab(vocab_size) -> None:
    """A BPE vocabulary: the 256 bytes and at least one merge, ids that fit in uint16."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not MIN_BPE_VOCAB <= vocab_size <= 65536:
        raise ValueError(
            f"vocab_size: a BPE vocabulary holds the 256 bytes and at least one merge, so it must be an integer "
            f">= {MIN_BPE_VOCAB} (and at most 65536: ids are stored as uint16), got {vocab_size!r} "
            "(for bytes alone use tokenizer='bytes')"
        )


class BPETokenizer(Tokenizer):
    """Byte-level BPE (Hugging Face ``tokenizers``): ``train(texts, vocab_size)``, ``to_json`` / ``from_json``.

    ``vocab_size`` counts the 256 byte tokens and the merges; it has no special tokens.
    """

    name = "bpe"
    split_pattern = SPLIT_PATTERN

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        to_byte = {c: b for b, c in byte_level_alphabet().items()}
        self.pieces = [bytes(to_byte[c] for c in tokenizer.id_to_token(i)) for i in range(self.vocab_size)]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        check_bpe_vocab(vocab_size)
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = list(byte_level_alphabet().values())  # every byte gets a token, merged or not
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}; decode bytes first")
        return self.tokenizer.encode(text).ids

    def encode_array(self, text: str) -> np.ndarray:
        """The text's ids as a uint16 array (a vocabulary holds at most 65536 tokens)."""
        return np.asarray(self.encode(text), dtype=np.uint16)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def to_bytes(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> bytes:
        """The bytes the ids stand for, their pieces joined."""
        values = ids.flatten().tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else [int(v) for v in ids]
        bad = [v for v in values if not 0 <= v < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}, got {bad[:5]}")
        return b"".join(map(self.pieces.__getitem__, values))

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self.to_bytes)


def piece_lengths(tokenizer) -> torch.Tensor:
    """Bytes each token stands for, (vocab_size,) int64: the denominator of bits per byte."""
    return torch.tensor([len(piece) for piece in tokenizer.pieces])


def tokenizer_record(tokenizer) -> dict:
    """What a checkpoint keeps of its tokenizer, enough to rebuild it: the name, and BPE's JSON."""
    return {"name": tokenizer.name, "json": tokenizer.to_json() if tokenizer.name == "bpe" else None}


def tokenizer_from_record(record: dict | None):
    """The tokenizer of a :func:`tokenizer_record` (None, a checkpoint from before there was a choice: bytes)."""
    if record is None or record["name"] == "bytes":
        return ByteTokenizer()
    return BPETokenizer.from_json(record["json"])


def model_tokenizer(tokenizer, vocab_size: int, use: str):
    """``tokenizer`` (default bytes), checked against a model's ``vocab_size``; ``use`` says what for ("score")."""
    tokenizer = tokenizer or ByteTokenizer()
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"the model has a vocabulary of {vocab_size} tokens, the tokenizer {tokenizer.vocab_size}: "
            f"{use} with the tokenizer the model was trained with (moelab.runs.checkpoint.load_tokenizer)"
        )
    return tokenizer


def show_tokens(tokenizer, text: str, separator: str = "│") -> str:
    """The text cut into its tokens, for reading: ``␣`` a space, ``⏎`` a newline, and a piece that is
    not whole UTF-8 characters (a byte of an accented letter) as its bytes in hex, e.g. ``<c3>``."""

    def shown(piece: bytes) -> str:
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(f"<{b:02x}>" for b in piece)
        return text.replace(" ", "␣").replace("\n", "⏎")

    return separator.join(shown(tokenizer.pieces[i]) for i in tokenizer.encode(text))
