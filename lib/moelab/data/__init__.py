"""Corpora: fetch, read, clean, catalog, split by work, and encode to arrays of tokens (bytes or BPE).

One job per module; every public name is re-exported here, so ``from moelab.data
import prepare_dataset`` and ``from moelab import data; data.prepare_dataset(...)`` work.

- ``sources``: the Machado manifest, fetching it sha256-verified (``data/raw``, a
  mirror, or a download), and reading any corpus (Machado, a folder of ``.txt``, a
  CSV/parquet table) into one row per work under a UTF-8 decoding policy.
- ``cleaning``: ``clean_text`` and its rules, in order.
- ``splits``: the catalog (one row per work) and the assignment of whole works to train / val / test.
- ``prepare``: ``prepare_dataset``, cleaning, cataloging, splitting and encoding a corpus into
  ``data/processed/<dataset>/``.
- ``dataset``: that folder's layout, ``PreparedDataset``, and ``load_dataset`` / ``load_split`` reading it.
- ``stats``: text statistics (UTF-8 profile, character classes, tokens by length in bytes), LN2 for bits per byte.
"""

from moelab.data.cleaning import (
    CLEANING_RULES,
    CLEANING_VERSION,
    clean_text,
    clean_text_with_report,
    drop_page_numbers,
    drop_running_headers,
    join_wrapped_lines,
    normalize_unicode,
    normalize_whitespace,
    rejoin_hyphenated_words,
)
from moelab.data.dataset import (
    SEPARATOR,
    PreparedDataset,
    bytes_per_token,
    check_dataset_vocab,
    dataset_vocab,
    load_dataset,
    load_split,
    parse_dataset_name,
    tokenizer_name,
    tokenized_name,
    with_dataset_vocab,
)
from moelab.data.prepare import check_tokenizer_choice, prepare_dataset
from moelab.data.sources import (
    DECODE_POLICIES,
    MACHADO_BASE_URL,
    MACHADO_COMMIT,
    MACHADO_REPO,
    MIRROR_ENV,
    CorpusError,
    FetchReport,
    decode_bytes,
    fetch_machado,
    find_invalid_utf8,
    load_works,
    machado_manifest,
    manifest_sha256,
)
from moelab.data.splits import SPLITS, assign_splits, build_catalog
from moelab.data.stats import LN2, char_class, character_frequencies, token_length_profile, utf8_profile

__all__ = [
    "CLEANING_RULES",
    "CLEANING_VERSION",
    "DECODE_POLICIES",
    "LN2",
    "MACHADO_BASE_URL",
    "MACHADO_COMMIT",
    "MACHADO_REPO",
    "MIRROR_ENV",
    "SEPARATOR",
    "SPLITS",
    "CorpusError",
    "FetchReport",
    "PreparedDataset",
    "assign_splits",
    "build_catalog",
    "char_class",
    "character_frequencies",
    "clean_text",
    "clean_text_with_report",
    "decode_bytes",
    "drop_page_numbers",
    "drop_running_headers",
    "fetch_machado",
    "find_invalid_utf8",
    "join_wrapped_lines",
    "load_dataset",
    "load_split",
    "bytes_per_token",
    "check_dataset_vocab",
    "dataset_vocab",
    "check_tokenizer_choice",
    "parse_dataset_name",
    "tokenized_name",
    "tokenizer_name",
    "load_works",
    "machado_manifest",
    "manifest_sha256",
    "normalize_unicode",
    "normalize_whitespace",
    "prepare_dataset",
    "rejoin_hyphenated_words",
    "token_length_profile",
    "utf8_profile",
    "with_dataset_vocab",
]
