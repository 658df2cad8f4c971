"""Text statistics for looking at a corpus through a model's eyes: its bytes, characters and tokens."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

import pandas as pd


def utf8_profile(text: str) -> dict[str, float]:
    """Share of characters that take more than one byte in UTF-8, and bytes per character."""
    if not text:
        return {"characters": 0, "bytes": 0, "multibyte_share": math.nan, "bytes_per_char": math.nan}
    n_bytes = len(text.encode("utf-8"))
    multibyte = sum(1 for ch in text if ord(ch) > 127)
    return {
        "characters": len(text),
        "bytes": n_bytes,
        "multibyte_share": multibyte / len(text),
        "bytes_per_char": n_bytes / len(text),
    }


def char_class(ch: str) -> str:
    """A readable class for one character: the kinds of bytes a byte-level model must learn."""
    if ch == "\n":
        return "newline"
    if ch.isspace():
        return "space"
    if ch.isdigit():
        return "digit"
    if ch.isalpha():
        if ord(ch) > 127:
            # a letter with a diacritic decomposes canonically (no "<compat>" tag): é = e + ◌́
            decomposition = unicodedata.decomposition(ch)
            return "accented letter" if decomposition and not decomposition.startswith("<") else "other letter"
        return "uppercase" if ch.isupper() else "lowercase"
    if unicodedata.category(ch).startswith("P"):
        return "punctuation"
    return "other"


def character_frequencies(text: str) -> pd.DataFrame:
    """Characters of text by frequency: count, share, UTF-8 bytes and class (one row per character)."""
    counts = Counter(text).most_common()
    frame = pd.DataFrame(counts, columns=["char", "count"]).astype({"count": "int64"})
    frame["share"] = frame["count"] / max(len(text), 1)
    frame["utf8_bytes"] = [len(c.encode("utf-8")) for c in frame["char"]]
    frame["class"] = [char_class(c) for c in frame["char"]]
    frame["shown"] = frame["char"].map(lambda c: {"\n": "⏎", " ": "␣"}.get(c, c))
    return frame


def token_length_profile(ids, tokenizer) -> pd.DataFrame:
    """By token length in bytes: how many tokens of the vocabulary have it, and what share of the
    text's tokens and bytes (``ids``: a split's token ids) tokens of that length carry."""
    import numpy as np

    lengths = np.array([len(piece) for piece in tokenizer.pieces])
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(lengths))
    table = pd.DataFrame({"length": lengths, "tokens": counts, "bytes": counts * lengths})
    table = table.groupby("length").agg(vocabulary=("length", "size"), tokens=("tokens", "sum"), bytes=("bytes", "sum"))
    table["share_of_tokens"] = table["tokens"] / table["tokens"].sum()
    table["share_of_bytes"] = table["bytes"] / table["bytes"].sum()
    return table.rename_axis("bytes per token")


LN2 = math.log(2.0)  # nats per bit: bits per byte = nats / LN2 / bytes
