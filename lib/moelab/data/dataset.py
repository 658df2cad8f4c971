"""The prepared dataset on disk: its layout, PreparedDataset, and load_dataset / load_split reading it.

Data flow::

    source ──► data/raw/<dataset>/         (sources.py: Machado fetched verified, or a folder / table)
           ──► data/processed/<dataset>/   train.bin val.bin test.bin, catalog.parquet, meta.json
                                           (+ tokenizer.json for BPE)
                                           (prepare.py: prepare_dataset; the catalog and splits: splits.py)

Each split file holds whole works, cleaned (cleaning.py), encoded by the dataset's
tokenizer (:mod:`moelab.data.tokenizer`: ``bytes``, one uint8 per UTF-8 byte, or ``bpe``, a
byte-level BPE trained on the training split alone, uint16 ids) and joined by
``SEPARATOR``; the catalog gives each work's ``split``, ``offset`` and ``tokens`` in its
file. ``meta.json`` says which tokenizer, vocabulary and dtype, and each split's tokens
and UTF-8 bytes (bits per byte divide by those). It is written last and carries a
fingerprint of the inputs and settings, so re-preparing unchanged inputs rewrites nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moelab.paths import data_dir
from moelab.data.tokenizer import BPETokenizer, ByteTokenizer
from moelab.data.sources import CorpusError
from moelab.data.splits import SPLITS

SEPARATOR = "\n\n"  # between works in a .bin file


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


def dataset_vocab(dataset: str) -> int:
    """A dataset's vocabulary: its meta.json's once prepared, else what its default name says (bytes: 256)."""
    folder = data_dir() / "processed" / dataset
    if (folder / "meta.json").is_file():
        return int(json.loads((folder / "meta.json").read_text()).get("vocab_size", 256))
    return parse_dataset_name(dataset)[2] or 256


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


def parse_dataset_name(dataset: str) -> tuple[str, str, int | None]:
    """What a default folder name says, the inverse of :func:`tokenized_name`: (name, tokenizer, vocab_size)."""
    bpe = re.fullmatch(r"(.+)-bpe(\d+)", dataset)
    return (bpe[1], "bpe", int(bpe[2])) if bpe else (dataset, "bytes", None)


def _how_to_prepare(dataset: str) -> str:
    """The notebook, shell command and Python call that prepare ``dataset``, as its name implies."""
    name, tokenizer, vocab_size = parse_dataset_name(dataset)
    bpe = f', tokenizer="bpe", vocab_size={vocab_size}' if tokenizer == "bpe" else ""
    flags = f" --tokenizer bpe --vocab-size {vocab_size}" if tokenizer == "bpe" else ""
    if name == "machado":
        call = f'prepare_dataset("machado"{bpe})' if bpe else "prepare_dataset()"
        command = f"moelab prepare machado{flags}"
    else:
        call = f'prepare_dataset(<its source>, dataset="{dataset}"{bpe})'
        command = f"moelab prepare <its source> --dataset {dataset}{flags}"
    return f"run notebooks/01_data_prep.ipynb, `{command}` or moelab.data.{call}"


def load_dataset(dataset: str = "machado", data_root: str | os.PathLike | None = None) -> PreparedDataset:
    """Open a prepared dataset (run notebook 01 or prepare_dataset first)."""
    folder = (Path(data_root) if data_root is not None else data_dir()) / "processed" / dataset
    if not (folder / "meta.json").is_file():
        raise CorpusError(f"no prepared dataset at {folder}; {_how_to_prepare(dataset)}")
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
