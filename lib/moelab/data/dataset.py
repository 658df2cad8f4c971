"""The prepared dataset: catalog, splits by work, encoding to token arrays, loading.

Data flow::

    source ──► data/raw/<dataset>/         (sources.py: Machado fetched verified, or a folder / table)
           ──► data/processed/<dataset>/   train.bin val.bin test.bin, catalog.parquet, meta.json
                                           (+ tokenizer.json for BPE)

Each split file holds whole works, cleaned (cleaning.py), encoded by the dataset's
tokenizer (:mod:`moelab.data.tokenizer`: ``bytes``, one uint8 per UTF-8 byte, or ``bpe``, a
byte-level BPE trained on the training split alone, uint16 ids) and joined by
``SEPARATOR``; the catalog gives each work's ``split``, ``offset`` and ``tokens`` in its
file. ``meta.json`` says which tokenizer, vocabulary and dtype, and each split's tokens
and UTF-8 bytes (bits per byte divide by those). It is written last and carries a
fingerprint of the inputs and settings, so re-preparing unchanged inputs rewrites nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from moelab.paths import atomic_write, data_dir
from moelab.data.tokenizer import BPETokenizer, ByteTokenizer, check_bpe_vocab
from moelab.data.cleaning import CLEANING_VERSION, clean_text_with_report
from moelab.data.sources import CorpusError, load_works

SPLITS = ("train", "val", "test")
SEPARATOR = "\n\n"  # between works in a .bin file

# ============================================================================ catalog and splits


def build_catalog(works: pd.DataFrame, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """One row per work with its sizes before and after cleaning; returns (catalog, cleaned texts)."""
    rows, cleaned_texts = [], []
    for work in tqdm(list(works.itertuples()), desc="cleaning", unit="work", disable=not progress):
        cleaned, report = clean_text_with_report(work.text)
        cleaned_texts.append(cleaned)
        rows.append(
            {
                "category": work.category,
                "work": work.work,
                "bytes": work.bytes,
                "characters": len(work.text),
                "lines": work.text.count("\n") + (0 if work.text.endswith("\n") or not work.text else 1),
                "words": len(work.text.split()),
                "sha256": work.sha256,
                "decode_issues": work.decode_issues,
                "cleaned_bytes": len(cleaned.encode("utf-8")),
                "paragraphs": cleaned.count("\n") + 1 if cleaned else 0,
                **{f"changed_{name}": count for name, count in report.items()},
            }
        )
    return pd.DataFrame(rows), cleaned_texts



def assign_splits(
    catalog: pd.DataFrame,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 1337,
    size_column: str = "cleaned_bytes",
    tolerance: float = 0.25,
) -> pd.Series:
    """Assign whole works to train/val/test, about the given fractions of bytes.

    Stratified by category: held-out works are drawn from the categories in turn
    (seeded shuffle), a work is taken only if it keeps the split within
    ``(1 + tolerance)`` of its byte target, and every category keeps at least one
    work in train. A split that nothing fits gets the smallest eligible work, so
    val and test are never empty when there are enough works.
    """
    _check_fractions(val_fraction, test_fraction)
    rng = random.Random(seed)
    queues = _shuffled_by_category(catalog, rng)
    categories = sorted(queues)
    rng.shuffle(categories)
    sizes = catalog[size_column]
    total = float(sizes.sum())
    held_out = _HeldOut(sizes, queues, {"val": val_fraction * total, "test": test_fraction * total}, tolerance)
    while held_out.hungry() and held_out.take_round(categories):
        pass
    held_out.fill_empty(categories)
    return held_out.split


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {value!r}")
    if val_fraction + test_fraction >= 0.5:
        raise ValueError("val_fraction + test_fraction must leave most of the corpus for training (< 0.5)")


def _shuffled_by_category(catalog: pd.DataFrame, rng: random.Random) -> dict[str, list]:
    """Each category's catalog rows, in a seeded random order."""
    queues = {}
    for category, group in catalog.groupby("category", sort=True):
        order = list(group.index)
        rng.shuffle(order)
        queues[category] = order
    return queues


class _HeldOut:
    """assign_splits' state: every work's split, and how many bytes val and test hold against their targets."""

    def __init__(self, sizes: pd.Series, queues: dict[str, list], targets: dict[str, float], tolerance: float) -> None:
        self.sizes, self.queues, self.targets, self.tolerance = sizes, queues, targets, tolerance
        self.filled = {name: 0.0 for name in targets}
        self.split = pd.Series("train", index=sizes.index, dtype=object)

    def eligible(self, category: str) -> list:
        """The category's works still in train, unless taking one would leave it none there."""
        left_in_train = [i for i in self.queues[category] if self.split[i] == "train"]
        return left_in_train if len(left_in_train) > 1 else []

    def hungry(self) -> list[str]:
        """Held-out splits still below their target, less the tolerance."""
        return [s for s in self.targets if self.filled[s] < self.targets[s] * (1 - self.tolerance)]

    def take(self, index, name: str) -> None:
        self.split[index] = name
        self.filled[name] += self.sizes[index]

    def take_round(self, categories: list[str]) -> bool:
        """Each category in turn gives its next fitting work to the hungriest split; False if none was taken."""
        progressed = False
        for category in categories:
            hungry = self.hungry()
            if not hungry:
                break
            name = max(hungry, key=lambda s: (self.targets[s] - self.filled[s]) / self.targets[s])
            limit = self.targets[name] * (1 + self.tolerance)
            fits = [i for i in self.eligible(category) if self.filled[name] + self.sizes[i] <= limit]
            if fits:
                self.take(fits[0], name)
                progressed = True
        return progressed

    def fill_empty(self, categories: list[str]) -> None:
        """A held-out split that nothing fitted gets the smallest eligible work."""
        for name in self.targets:
            if self.filled[name] == 0:
                candidates = [i for c in categories for i in self.eligible(c)]
                if candidates:
                    self.take(min(candidates, key=lambda i: (self.sizes[i], i)), name)


# ============================================================================ the prepared dataset


@dataclass
class PreparedDataset:
    """A processed dataset on disk: its folder, catalog and meta.json contents."""

    path: Path
    catalog: pd.DataFrame
    meta: dict
    rewritten: bool = field(default=True)

    @property
    def tokenizer(self) -> ByteTokenizer | BPETokenizer:
        """The tokenizer the split files were encoded with."""
        if tokenizer_name(self.meta) == "bytes":
            return ByteTokenizer()
        return BPETokenizer.from_json((self.path / "tokenizer.json").read_text(encoding="utf-8"))

    def cleaned_texts(self) -> pd.Series:
        """Each work's cleaned text, read back from the split files, indexed by (category, work)."""
        texts, tokenizer = {}, self.tokenizer
        for split in SPLITS:
            members = self.catalog[self.catalog["split"] == split]
            if members.empty:
                continue
            ids = self._split_ids(split)
            for row in members.itertuples():
                n = getattr(row, "tokens", row.cleaned_bytes)  # (datasets from before tokenizers: bytes)
                texts[(row.category, row.work)] = tokenizer.decode(ids[row.offset : row.offset + n].tolist())
        return pd.Series(texts, name="text").rename_axis(["category", "work"])

    def split_text(self, split: str) -> str:
        """A split's whole text (its works joined by SEPARATOR), decoded from its file."""
        return self.tokenizer.to_bytes(self._split_ids(split)).decode("utf-8", errors="replace")

    def _split_ids(self, split: str) -> np.ndarray:
        """A split file's token ids, in the dtype meta.json names (uint8 before tokenizers existed)."""
        return np.fromfile(self.path / f"{split}.bin", dtype=np.dtype(self.meta.get("dtype", "uint8")))

    def token_counts(self) -> pd.DataFrame:
        """Per split: its tokens, the UTF-8 bytes of its text, and bytes per token (1 for bytes)."""
        rows = {split: {"tokens": info.get("tokens", info["bytes"]), "text_bytes": info.get("text_bytes", info["bytes"])}
                for split, info in self.meta["splits"].items()}  # fmt: skip
        table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")
        table["bytes_per_token"] = table["text_bytes"] / table["tokens"].where(table["tokens"] > 0)
        return table

    def split_sizes(self) -> pd.DataFrame:
        """Bytes and works per split, as a DataFrame."""
        table = self.catalog.groupby("split").agg(works=("work", "size"), bytes=("cleaned_bytes", "sum"))
        table = table.reindex(list(SPLITS)).fillna(0).astype(int)
        table["share"] = table["bytes"] / table["bytes"].sum()
        return table

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
    fingerprint = _fingerprint(works, settings)
    out = root / "processed" / dataset
    existing = _load_if_current(out, fingerprint)
    if existing is not None:
        return existing

    catalog, cleaned = build_catalog(works, progress=progress)
    catalog["split"] = assign_splits(catalog, val_fraction, test_fraction, split_seed)
    _check_no_split_empty(catalog, source)  # before anything is written: an earlier prepared dataset stays as it was
    if tokenizer == "bpe":  # trained on the training split's works only
        coder = BPETokenizer.train((cleaned[i] for i in catalog.index[catalog["split"] == "train"]), vocab_size)
        if coder.vocab_size != vocab_size:  # BPE stops when no pair occurs twice: never a silently smaller vocabulary
            raise CorpusError(
                f"the training split of {source!s} has only enough repeated pairs for a BPE vocabulary of "
                f"{coder.vocab_size} tokens, not {vocab_size}: choose vocab_size <= {coder.vocab_size} or a larger corpus"
            )
    else:
        coder = ByteTokenizer()
    encoded = _encode_splits(catalog, cleaned, coder)
    meta = {"dataset": dataset, **_meta(catalog, encoded, coder), "source": info, **settings, "fingerprint": fingerprint}
    _write_dataset(out, catalog, encoded, meta, coder)
    return PreparedDataset(out, catalog, meta, rewritten=True)


def check_tokenizer_choice(tokenizer: str, vocab_size: int | None) -> None:
    """A clear error for a tokenizer name or vocabulary size that cannot be built."""
    names = (ByteTokenizer.name, BPETokenizer.name)
    if tokenizer not in names:
        raise ValueError(f"tokenizer must be one of {', '.join(names)}, got {tokenizer!r}")
    if tokenizer == "bytes" and vocab_size not in (None, 256):
        raise ValueError(f"vocab_size: the bytes tokenizer has 256 tokens; got {vocab_size!r} (for more, use tokenizer='bpe')")
    if tokenizer == "bpe":
        check_bpe_vocab(vocab_size)


def check_dataset_vocab(prepared: "PreparedDataset", vocab_size: int) -> None:
    """A clear error when a model's vocabulary is not the dataset's (another tokenizer, or another BPE size)."""
    want = prepared.meta.get("vocab_size", 256)
    if vocab_size != want:
        name = prepared.path.name
        raise ValueError(
            f"the dataset {name!r} was built with the {tokenizer_name(prepared.meta)} tokenizer ({want} tokens), but "
            f"the model's vocab_size is {vocab_size}: train with vocab_size={want} (--set vocab_size={want}), or "
            "prepare a dataset with the tokenizer this run expects"
        )


def with_dataset_vocab(overrides: dict, dataset: str) -> dict:
    """``overrides`` with the dataset's ``vocab_size`` (bytes: 256) added when they set none."""
    if "vocab_size" in overrides:
        return overrides
    return {**overrides, "vocab_size": load_dataset(dataset).meta.get("vocab_size", 256)}


def bytes_per_token(meta: dict, split: str) -> float:
    """UTF-8 bytes of a split's text per token of its file (1 for bytes): bits per byte = bits per token / this."""
    info = meta["splits"][split]
    return info.get("text_bytes", info["bytes"]) / info.get("tokens", info["bytes"])


def tokenizer_name(meta: dict) -> str:
    """"bytes" or "bpe" from a meta.json (datasets from before the choice say "bytes (UTF-8)")."""
    return str(meta.get("tokenizer", "bytes")).split()[0]


def tokenized_name(name: str, tokenizer: str, vocab_size: int | None) -> str:
    """A dataset's default folder name: ``name`` for bytes, ``<name>-bpe<vocab_size>`` for BPE."""
    return f"{name}-bpe{vocab_size}" if tokenizer == "bpe" else name


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


def load_dataset(dataset: str = "machado", data_root: str | os.PathLike | None = None) -> PreparedDataset:
    """Open a prepared dataset (run notebook 01 or prepare_dataset first)."""
    folder = (Path(data_root) if data_root is not None else data_dir()) / "processed" / dataset
    if not (folder / "meta.json").is_file():
        bpe = re.fullmatch(r"(.+)-bpe(\d+)", dataset)
        if dataset == "machado" or (bpe and bpe[1] == "machado"):
            call = f'prepare_dataset("machado", tokenizer="bpe", vocab_size={bpe[2]})' if bpe else "prepare_dataset()"
        else:
            tokenizer = f', tokenizer="bpe", vocab_size={bpe[2]}' if bpe else ""
            call = f'prepare_dataset(<its source>, dataset="{dataset}"{tokenizer})'
        raise CorpusError(f"no prepared dataset at {folder}; run notebooks/01_data_prep.ipynb or moelab.data.{call}")
    meta = json.loads((folder / "meta.json").read_text())
    return PreparedDataset(folder, pd.read_parquet(folder / "catalog.parquet"), meta, rewritten=False)


def load_split(dataset: str, split: str, data_root: str | os.PathLike | None = None) -> np.memmap:
    """A split's token ids as a read-only memory map (uint8 bytes, or uint16 BPE ids: meta.json's dtype)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    prepared = load_dataset(dataset, data_root)
    path = prepared.path / f"{split}.bin"
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty: the {split} split has no works; use a larger corpus or other fractions")
    return np.memmap(path, dtype=np.dtype(prepared.meta.get("dtype", "uint8")), mode="r")

