"""prepare_dataset: a corpus cleaned, cataloged, split by work and encoded into data/processed/<dataset>/."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from moelab.paths import atomic_write, data_dir
from moelab.data.tokenizer import BPETokenizer, ByteTokenizer, check_bpe_vocab
from moelab.data.cleaning import CLEANING_VERSION
from moelab.data.sources import CorpusError, load_works
from moelab.data.splits import SPLITS, assign_splits, build_catalog
from moelab.data.dataset import SEPARATOR, PreparedDataset, tokenized_name


def prepare_dataset(
    source: str | os.PathLike = "machado",
    dataset: str | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 1337,
    max_works_per_category: int | None = None,
    text_column: str = "text",
    decode_errors: str = "replace",
    tokenizer: str = "bytes",
    vocab_size: int | None = None,
    progress: bool = True,
) -> PreparedDataset:
    """Fetch/read, clean, catalog, split and encode a corpus into ``data/processed/<dataset>/``.

    ``max_works_per_category`` keeps only the smallest works of each category (quick
    runs). ``tokenizer``: ``"bytes"`` (default) or ``"bpe"`` with ``vocab_size`` tokens
    (at least 257), trained on the training split only. Re-running with the same inputs
    and settings rewrites nothing.
    """
    check_tokenizer_choice(tokenizer, vocab_size)
    root = Path(data_root) if data_root is not None else data_dir()
    dataset = _dataset_name(source, dataset, tokenizer, vocab_size)
    raw_dir = root / "raw" / "machado" if str(source) == "machado" else None
    works, info = load_works(
        source, mirror=mirror, raw_dir=raw_dir, text_column=text_column, decode_errors=decode_errors, progress=progress
    )
    works = _smallest_works(works, max_works_per_category)
    if works.empty:
        raise CorpusError(f"the corpus {source!s} has no works to prepare")
    settings = _settings(
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        max_works_per_category=max_works_per_category,
        decode_errors=decode_errors,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
    )
    fingerprint = _fingerprint(works, settings)
    out = root / "processed" / dataset
    existing = _load_if_current(out, fingerprint)
    if existing is not None:
        return existing

    catalog, cleaned = build_catalog(works, progress=progress)
    catalog["split"] = assign_splits(catalog, val_fraction, test_fraction, split_seed)
    _check_no_split_empty(catalog, source)  # before anything is written: an earlier prepared dataset stays as it was
    coder = _split_tokenizer(tokenizer, vocab_size, catalog, cleaned, source)
    encoded = _encode_splits(catalog, cleaned, coder)
    meta = {"dataset": dataset, **_meta(catalog, encoded, coder), "source": info, **settings, "fingerprint": fingerprint}
    _write_dataset(out, catalog, encoded, meta, coder)
    return PreparedDataset(out, catalog, meta, rewritten=True)


def _settings(
    *,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    max_works_per_category: int | None,
    decode_errors: str,
    tokenizer: str,
    vocab_size: int | None,
) -> dict:
    """The settings a prepared dataset depends on besides its inputs: recorded in meta.json, covered by the fingerprint."""
    settings = {
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "max_works_per_category": max_works_per_category,
        "decode_errors": decode_errors,
        "cleaning_version": CLEANING_VERSION,
        "separator": SEPARATOR,
    }
    if tokenizer != "bytes":  # (bytes datasets keep the fingerprint they had before there was a choice)
        settings.update(tokenizer=tokenizer, requested_vocab_size=vocab_size, split_pattern=BPETokenizer.split_pattern)
    return settings


def _split_tokenizer(
    tokenizer: str, vocab_size: int | None, catalog: pd.DataFrame, cleaned: list[str], source: str | os.PathLike
) -> ByteTokenizer | BPETokenizer:
    """The tokenizer that encodes the split files: bytes, or a BPE of exactly ``vocab_size`` tokens."""
    if tokenizer == "bpe":  # trained on the training split's works only
        coder = BPETokenizer.train((cleaned[i] for i in catalog.index[catalog["split"] == "train"]), vocab_size)
        if coder.vocab_size != vocab_size:  # BPE stops when no pair occurs twice: never a silently smaller vocabulary
            raise CorpusError(
                f"the training split of {source!s} has only enough repeated pairs for a BPE vocabulary of "
                f"{coder.vocab_size} tokens, not {vocab_size}: choose vocab_size <= {coder.vocab_size} or a larger corpus"
            )
    else:
        coder = ByteTokenizer()
    return coder


def check_tokenizer_choice(tokenizer: str, vocab_size: int | None) -> None:
    """A clear error for a tokenizer name or vocabulary size that cannot be built."""
    names = (ByteTokenizer.name, BPETokenizer.name)
    if tokenizer not in names:
        raise ValueError(f"tokenizer must be one of {', '.join(names)}, got {tokenizer!r}")
    if tokenizer == "bytes" and vocab_size not in (None, 256):
        raise ValueError(f"vocab_size: the bytes tokenizer has 256 tokens; got {vocab_size!r} (for more, use tokenizer='bpe')")
    if tokenizer == "bpe":
        check_bpe_vocab(vocab_size)


def _dataset_name(source: str | os.PathLike, dataset: str | None, tokenizer: str = "bytes", vocab_size=None) -> str:
    """The dataset's folder name: as given, else "machado" or the source file's or folder's stem,
    with "-bpe<vocab_size>" for BPE (so it never replaces the bytes dataset of the same corpus)."""
    if dataset is None:
        dataset = tokenized_name(Path(str(source)).stem if str(source) != "machado" else "machado", tokenizer, vocab_size)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", dataset):
        raise ValueError(f"dataset must be a simple folder name (letters, digits, . _ -), got {dataset!r}")
    return dataset


def _smallest_works(works: pd.DataFrame, per_category: int | None) -> pd.DataFrame:
    """Only the ``per_category`` smallest works of each category (all when None)."""
    if per_category is None:
        return works
    return (
        works.sort_values(["bytes", "work"])
        .groupby("category", sort=False)
        .head(per_category)
        .sort_values(["category", "work"])
        .reset_index(drop=True)
    )


def _fingerprint(works: pd.DataFrame, settings: dict) -> str:
    """sha256 of the works' names and contents and of the settings: what a prepared dataset depends on."""
    inputs = {"works": sorted(zip(works["category"], works["work"], works["sha256"])), **settings}
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def _check_no_split_empty(catalog: pd.DataFrame, source: str | os.PathLike) -> None:
    counts = catalog["split"].value_counts()
    missing = [s for s in SPLITS if counts.get(s, 0) == 0 or catalog.loc[catalog["split"] == s, "cleaned_bytes"].sum() == 0]
    if missing:
        raise CorpusError(
            f"the corpus {source!s} has {len(catalog)} work(s) with text; the {' and '.join(missing)} split(s) would "
            "get no text. Splits hold whole works and every category keeps one in train, so give at least three "
            "non-empty works (e.g. one more in a category that has two)"
        )


def _encode_splits(catalog: pd.DataFrame, cleaned: list[str], tokenizer) -> dict[str, np.ndarray]:
    """Each split's works, encoded and joined by SEPARATOR's tokens, as an array of the dataset's dtype.

    Sets each work's ``offset`` and ``tokens`` (its length in tokens) in the catalog.
    """
    dtype, ids = (np.uint8 if tokenizer.vocab_size <= 256 else np.uint16), tokenizer.encode_array
    separator = ids(SEPARATOR)
    catalog["offset"], catalog["tokens"] = 0, 0
    encoded = {}
    for split in SPLITS:
        members = catalog.index[catalog["split"] == split]
        works = [ids(cleaned[i]) for i in members]
        catalog.loc[members, "tokens"] = [len(w) for w in works]
        offsets = np.cumsum([0] + [len(w) + len(separator) for w in works[:-1]]).tolist() if works else []
        catalog.loc[members, "offset"] = offsets
        parts = [part for i, w in enumerate(works) for part in ((separator, w) if i else (w,))]
        encoded[split] = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
    return encoded


def _meta(catalog: pd.DataFrame, encoded: dict[str, np.ndarray], tokenizer) -> dict:
    """meta.json's description of the encoding and of each split file ("bytes": the file's size)."""
    separator_bytes = len(SEPARATOR.encode())
    splits = {}
    for s in SPLITS:
        members = catalog[catalog["split"] == s]
        text_bytes = int(members["cleaned_bytes"].sum()) + separator_bytes * max(len(members) - 1, 0)
        splits[s] = {"bytes": encoded[s].nbytes, "tokens": len(encoded[s]), "text_bytes": text_bytes,
                     "works": len(members), "sha256": hashlib.sha256(encoded[s].tobytes()).hexdigest()}  # fmt: skip
    return {
        "tokenizer": "bytes (UTF-8)" if tokenizer.name == "bytes" else "bpe",
        "vocab_size": tokenizer.vocab_size,
        "dtype": encoded["train"].dtype.name,
        "separator": SEPARATOR,
        "splits": splits,
    }


def _write_dataset(out: Path, catalog: pd.DataFrame, encoded: dict[str, np.ndarray], meta: dict, tokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        atomic_write(out / f"{split}.bin", lambda f, ids=encoded[split]: f.write(ids.tobytes()))
    if tokenizer.name == "bpe":
        atomic_write(out / "tokenizer.json", lambda f: f.write(tokenizer.to_json().encode("utf-8")))
    atomic_write(out / "catalog.parquet", lambda f: catalog.to_parquet(f, index=False))
    meta_json = json.dumps(meta, indent=2, ensure_ascii=False).encode()
    atomic_write(out / "meta.json", lambda f: f.write(meta_json))  # last: marks completion


def _load_if_current(folder: Path, fingerprint: str) -> PreparedDataset | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
        for split in SPLITS:
            if (folder / f"{split}.bin").stat().st_size != meta["splits"][split]["bytes"]:
                return None
        return PreparedDataset(folder, pd.read_parquet(folder / "catalog.parquet"), meta, rewritten=False)
    except (OSError, ValueError, KeyError):
        return None
