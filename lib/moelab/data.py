"""Corpora: fetch, read, clean, catalog, split by work, and encode to byte arrays.

Data flow::

    source ──► data/raw/<dataset>/         (Machado: download at a pinned commit or copy from a mirror, sha256-verified)
           ──► data/processed/<dataset>/   train.bin val.bin test.bin (uint8), catalog.parquet, meta.json

Sources: ``"machado"`` (the default; the complete works of Machado de Assis), a
folder of ``.txt`` files (sub-folders become categories), or a CSV/parquet file with
a text column. Bytes that are not valid UTF-8 are reported with the file and byte
offset and handled by a policy (``decode_errors``): ``"replace"`` (default: each bad
sequence becomes U+FFFD), ``"strict"`` (stop with an error), or ``"latin-1"`` (read
the whole file as ISO-8859-1, for corpora saved in that encoding).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .paths import atomic_write, data_dir, sha256_file

MACHADO_REPO = "luxedo/dataset-machado-de-assis"
MACHADO_COMMIT = "a13ca4a72f268f46db64804a67930d4c0f6db8e7"
MACHADO_BASE_URL = f"https://raw.githubusercontent.com/{MACHADO_REPO}/{MACHADO_COMMIT}/"
MIRROR_ENV = "MOELAB_CORPUS_MIRROR"
DECODE_POLICIES = ("replace", "strict", "latin-1")
SPLITS = ("train", "val", "test")
SEPARATOR = "\n\n"  # between works in a .bin file
CLEANING_VERSION = 1


class CorpusError(RuntimeError):
    """The corpus could not be fetched or read; the message says what to do."""


# ============================================================================ fetching


def machado_manifest() -> pd.DataFrame:
    """The project's copy of the upstream manifest: path, category, work, bytes, sha256, in_mirror."""
    with resources.files("moelab").joinpath("corpora/machado.csv").open("rb") as f:
        return pd.read_csv(f)


def manifest_sha256(manifest: pd.DataFrame) -> str:
    return hashlib.sha256(manifest.to_csv(index=False).encode()).hexdigest()


@dataclass
class FetchReport:
    """What ``fetch_machado`` found: the verified works and those it could not get."""

    root: Path
    works: pd.DataFrame  # manifest rows present and verified, with their local `file`
    missing: pd.DataFrame  # manifest rows not available from the source used
    source: str  # "local copy", "mirror <path>" or "download <url>"
    fetched: int = 0  # files copied or downloaded by this call

    def summary(self) -> str:
        text = f"{len(self.works)} works verified in {self.root} (source: {self.source}; fetched now: {self.fetched})"
        if len(self.missing):
            text += f"; missing {len(self.missing)}: {', '.join(self.missing['path'])}"
        return text


def fetch_machado(
    raw_dir: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
    manifest: pd.DataFrame | None = None,
    base_url: str = MACHADO_BASE_URL,
    retries: int = 2,
    progress: bool = True,
) -> FetchReport:
    """Make ``raw_dir`` (default ``data/raw/machado``) hold every work of the manifest, verified.

    Works already there and matching their sha256 are kept. The rest come from
    ``mirror`` (default: the ``MOELAB_CORPUS_MIRROR`` environment variable), a folder
    laid out like the upstream repository, or else are downloaded from ``base_url``
    (the upstream repository at the pinned commit), each retried up to ``retries``
    times. A file whose sha256 does not match is never used.
    """
    manifest = machado_manifest() if manifest is None else manifest
    root = Path(raw_dir) if raw_dir is not None else data_dir() / "raw" / "machado"
    mirror = mirror if mirror is not None else (os.environ.get(MIRROR_ENV) or None)

    present = manifest["path"].map(lambda p: _verified_local(root / p, _expected(manifest, p)))
    todo = manifest[~present]
    if todo.empty:
        return FetchReport(root, _with_files(manifest, root), manifest.iloc[:0], "local copy")
    if mirror is not None:
        source = f"mirror {mirror}"
        fetched, missing = _copy_from_mirror(todo, Path(mirror), root, progress)
    else:
        source = f"download {base_url}"
        fetched, missing = _download(todo, root, base_url, retries, progress)
    available = manifest[~manifest["path"].isin(missing)]
    return FetchReport(root, _with_files(available, root), manifest[manifest["path"].isin(missing)], source, fetched)


def _expected(manifest: pd.DataFrame, path: str) -> str:
    return manifest.loc[manifest["path"] == path, "sha256"].iloc[0]


def _with_files(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    return manifest.assign(file=[root / p for p in manifest["path"]]).reset_index(drop=True)


def _verified_local(path: Path, expected: str) -> bool:
    if not path.is_file():
        return False
    found = sha256_file(path)
    if found != expected:
        raise CorpusError(
            f"{path} does not match its sha256 in the manifest (expected {expected[:12]}…, found {found[:12]}…): "
            "it was edited or damaged. Move or delete it and run again to fetch a verified copy."
        )
    return True


def _copy_from_mirror(todo: pd.DataFrame, mirror: Path, root: Path, progress: bool) -> tuple[int, list[str]]:
    if not mirror.is_dir():
        raise CorpusError(
            f"corpus mirror {mirror} is not a folder. Point {MIRROR_ENV} (or `mirror=`) at a folder laid out "
            "as txt/<category>/<work>.txt, like ../shared/data/machado, or unset it to download."
        )
    in_mirror = todo["path"].map(lambda p: (mirror / p).is_file())
    missing = list(todo.loc[~in_mirror, "path"])
    fetched = 0
    for row in tqdm(list(todo[in_mirror].itertuples()), desc="copying corpus from mirror", unit="work", disable=not progress):
        source = mirror / row.path
        atomic_write(root / row.path, lambda f, source=source, expected=row.sha256: _copy_verified(source, f, expected))
        fetched += 1
    return fetched, missing


def _copy_verified(source: Path, target, expected: str) -> None:
    """Copy source into an open file, raising (so the copy is discarded) if its sha256 is not ``expected``."""
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            target.write(block)
    if digest.hexdigest() != expected:
        raise CorpusError(
            f"mirror file {source} does not match its sha256 (expected {expected[:12]}…, found {digest.hexdigest()[:12]}…). "
            f"Replace it with the file from {MACHADO_REPO} at commit {MACHADO_COMMIT[:10]}, or remove it from "
            "the mirror (the work is then reported as missing)."
        )


def _download(todo: pd.DataFrame, root: Path, base_url: str, retries: int, progress: bool) -> tuple[int, list[str]]:
    import pooch
    import requests

    pooch.get_logger().setLevel("WARNING")
    registry = {row.path: f"sha256:{row.sha256}" for row in todo.itertuples()}
    urls = {path: base_url + quote(path) for path in registry}
    fetcher = pooch.create(path=root, base_url=base_url, registry=registry, urls=urls, retry_if_failed=retries)
    fetched, missing = 0, []
    total = int(todo["bytes"].sum())
    with tqdm(total=total, unit="B", unit_scale=True, desc="downloading corpus", disable=not progress) as bar:
        for row in todo.itertuples():
            try:
                fetcher.fetch(row.path)
            except requests.exceptions.ConnectionError as err:
                raise CorpusError(
                    f"could not reach {base_url} to download {row.path} (offline?). Give a local copy of the corpus: "
                    f"set {MIRROR_ENV}=/path/to/machado (a folder with txt/<category>/<work>.txt, e.g. "
                    "../shared/data/machado) or pass mirror=... ."
                ) from err
            except requests.exceptions.HTTPError as err:
                if err.response is not None and err.response.status_code == 404:
                    missing.append(row.path)
                    continue
                raise CorpusError(f"downloading {urls[row.path]} failed: {err}. Run again to resume.") from err
            except ValueError as err:
                if "hash" not in str(err).lower():
                    raise
                raise CorpusError(
                    f"the download of {row.path} does not match its sha256 {row.sha256[:12]}… (from {urls[row.path]}); "
                    "it was not saved. Run again; if it persists, the source changed: use a verified mirror."
                ) from err
            fetched += 1
            bar.update(int(row.bytes))
    return fetched, missing


# ============================================================================ reading


def find_invalid_utf8(data: bytes) -> list[tuple[int, bytes]]:
    """(byte offset, offending bytes) of every invalid UTF-8 sequence in data."""
    problems, position = [], 0
    while position < len(data):
        try:
            data[position:].decode("utf-8")
            break
        except UnicodeDecodeError as err:
            problems.append((position + err.start, data[position + err.start : position + err.end]))
            position += err.end
    return problems


def decode_bytes(data: bytes, name: str, decode_errors: str = "replace") -> tuple[str, int]:
    """Decode UTF-8 under a policy; returns the text and the number of invalid sequences."""
    if decode_errors not in DECODE_POLICIES:
        raise ValueError(f"decode_errors must be one of {', '.join(DECODE_POLICIES)}, got {decode_errors!r}")
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    problems = find_invalid_utf8(data)
    first_offset, first_bytes = problems[0]
    where = f"{name}: {len(problems)} invalid UTF-8 sequence(s), the first at byte offset {first_offset} ({first_bytes.hex()})"
    if decode_errors == "strict":
        raise CorpusError(
            f"{where}. Fix the file, or choose decode_errors='replace' (bad bytes become U+FFFD) or "
            "'latin-1' (read the file as ISO-8859-1)."
        )
    warnings.warn(f"{where}; decode_errors={decode_errors!r}", stacklevel=3)
    text = data.decode("latin-1") if decode_errors == "latin-1" else data.decode("utf-8", errors="replace")
    return text, len(problems)


def load_works(
    source: str | os.PathLike = "machado",
    *,
    mirror: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    text_column: str = "text",
    decode_errors: str = "replace",
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Read a corpus into a DataFrame, one row per work: category, work, text, bytes, sha256, decode_issues.

    Also returns a dict describing the source (and, for Machado, the works missing).
    """
    if str(source) == "machado":
        report = fetch_machado(raw_dir, mirror=mirror, progress=progress)
        rows = [
            _work_row(row.category, row.work, Path(row.file).read_bytes(), str(row.path), decode_errors)
            for row in report.works.itertuples()
        ]
        info = {
            "kind": "machado",
            "upstream": f"{MACHADO_REPO}@{MACHADO_COMMIT}",
            "fetched_from": report.source,
            "manifest_sha256": manifest_sha256(machado_manifest()),
            "missing_works": list(report.missing["path"]),
        }
        return _works_frame(rows), info
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise CorpusError(f"no .txt files under {path}; a folder corpus is .txt files (sub-folders = categories)")
        rows = []
        for file in files:
            relative = file.relative_to(path)
            category = relative.parent.as_posix() if relative.parent != Path(".") else "uncategorized"
            rows.append(_work_row(category, file.stem, file.read_bytes(), relative.as_posix(), decode_errors))
        return _works_frame(rows), {"kind": "folder", "path": str(path.resolve()), "missing_works": []}
    if path.is_file() and path.suffix.lower() in (".csv", ".parquet", ".pq"):
        return _table_works(path, text_column, decode_errors), {
            "kind": "table",
            "path": str(path.resolve()),
            "text_column": text_column,
            "missing_works": [],
        }
    raise CorpusError(
        f"corpus source {str(source)!r} is not 'machado', a folder of .txt files, or a .csv/.parquet file"
        + ("" if path.exists() else " (no such file or folder)")
    )


def _work_row(category: str, work: str, data: bytes, name: str, decode_errors: str) -> dict:
    text, issues = decode_bytes(data, name, decode_errors)
    return {
        "category": category,
        "work": work,
        "text": text,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "decode_issues": issues,
    }


def _works_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["category", "work", "text", "bytes", "sha256", "decode_issues"])
    duplicated = frame.duplicated(["category", "work"])
    if duplicated.any():
        names = ", ".join(f"{c}/{w}" for c, w in frame.loc[duplicated, ["category", "work"]].itertuples(index=False))
        raise CorpusError(f"works must have unique (category, work) names; repeated: {names}")
    return frame.sort_values(["category", "work"]).reset_index(drop=True)


def _table_works(path: Path, text_column: str, decode_errors: str) -> pd.DataFrame:
    if path.suffix.lower() == ".csv":
        text, _ = decode_bytes(path.read_bytes(), str(path), decode_errors)
        table = pd.read_csv(io.StringIO(text))
    else:
        table = pd.read_parquet(path)
    if text_column not in table.columns:
        raise CorpusError(
            f"{path} has no column {text_column!r}; its columns are {', '.join(map(str, table.columns))}. "
            "Pass text_column= to name the one holding the texts."
        )
    texts = table[text_column]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        warnings.warn(f"{path}: skipping {int(empty.sum())} row(s) with no text in {text_column!r}", stacklevel=3)
    table = table[~empty]
    categories = table["category"].astype(str) if "category" in table.columns else pd.Series("uncategorized", index=table.index)
    name_column = next((c for c in ("work", "title", "name") if c in table.columns), None)
    names = table[name_column].astype(str) if name_column else pd.Series([f"row{i:05d}" for i in table.index], index=table.index)
    rows = []
    for category, work, value in zip(categories, names, table[text_column]):
        if isinstance(value, bytes):
            rows.append(_work_row(category, work, value, f"{path}:{work}", decode_errors))
        else:
            rows.append(_work_row(category, work, str(value).encode("utf-8", errors="surrogatepass"), f"{path}:{work}", decode_errors))
    return _works_frame(rows)


# ============================================================================ cleaning
# Each rule returns (new text, characters removed or replaced); clean_text composes them.


def _edit_size(old: str, new: str) -> int:
    """Characters removed or replaced going from old to new (common prefix and suffix ignored)."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end = 0
    while end < min(len(old), len(new)) - start and old[-1 - end] == new[-1 - end]:
        end += 1
    return max(len(old), len(new)) - start - end


def _subn(pattern: re.Pattern, replacement: str | Callable, text: str) -> tuple[str, int]:
    changed = 0

    def replace(match: re.Match) -> str:
        nonlocal changed
        new = replacement(match) if callable(replacement) else match.expand(replacement)
        changed += _edit_size(match.group(0), new)
        return new

    return pattern.sub(replace, text), changed


_LINE_BREAKS = re.compile(r"\r\n?|[\ufeff\u00ad\u200b]")


def normalize_unicode(text: str) -> tuple[str, int]:
    """NFC composition; CR/CRLF line ends become LF; BOM, soft hyphens and zero-width spaces go."""
    text, changed = _subn(_LINE_BREAKS, lambda m: "\n" if m.group(0).startswith("\r") else "", text)
    composed = unicodedata.normalize("NFC", text)
    if composed != text:
        changed += max(len(text) - len(composed), sum(a != b for a, b in zip(text, composed)))
    return composed, changed


_ODD_SPACES = re.compile(r"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUNS = re.compile(r" {2,}")
_LINE_EDGE_SPACES = re.compile(r"^ +| +$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> tuple[str, int]:
    """Tabs and Unicode spaces become spaces; runs of spaces collapse; lines are stripped; at most one blank line."""
    total = 0
    for pattern, replacement in (
        (_ODD_SPACES, " "),
        (_SPACE_RUNS, " "),
        (_LINE_EDGE_SPACES, ""),
        (_BLANK_RUNS, "\n\n"),
    ):
        text, changed = _subn(pattern, replacement, text)
        total += changed
    stripped = text.strip("\n")
    return stripped, total + len(text) - len(stripped)


_PAGE_NUMBER_LINE = re.compile(r"^[-–—]? ?\d{1,3} ?[-–—]?(?:\n|\Z)", re.M)


def drop_page_numbers(text: str) -> tuple[str, int]:
    """Remove lines that hold only a page number (1–3 digits, maybe dashed: "- 12 -").

    Four-digit lines are kept: in this corpus they are years heading poems and chronicles.
    """
    result, changed = _subn(_PAGE_NUMBER_LINE, "", text)
    if not text.endswith("\n") and result.endswith("\n"):  # a number on the last line leaves its line break
        changed += len(result) - len(result.rstrip("\n"))
        result = result.rstrip("\n")
    return result, changed


def drop_running_headers(text: str, min_repeats: int = 3) -> tuple[str, int]:
    """Remove later copies of the title line when it repeats like a page header (>= min_repeats times).

    Only the title is considered: other repeated lines (a play's speaker names, a
    poem's refrain) are content.
    """
    lines = text.split("\n")
    title_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if title_index is None:
        return text, 0
    title = lines[title_index].strip()
    repeats = [i for i in range(title_index + 1, len(lines)) if lines[i].strip() == title]
    if len(repeats) < min_repeats or not 3 <= len(title) <= 80:
        return text, 0
    drop = set(repeats)
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return "\n".join(kept), sum(len(lines[i]) + 1 for i in drop)


_HYPHEN_BREAK = re.compile(r"(\w+)-\n(\w+)")
_WORD = re.compile(r"\w+")
_HYPHENATED_PAIR = re.compile(r"(?=\b(\w+-\w+))")


def rejoin_hyphenated_words(text: str) -> tuple[str, int]:
    """Rejoin a word broken by a hyphen at a line end.

    Portuguese hyphens are mostly real (``disse-lhe``, ``bem-aventurança``), so the
    hyphen is dropped only when the joined word occurs elsewhere in the text and the
    hyphenated form does not (``compa-/ração`` → ``comparação``); otherwise the word is
    rejoined with its hyphen (``calçou-/as`` → ``calçou-as``).
    """
    words = {w.lower() for w in _WORD.findall(text)}
    hyphenated = {w.lower() for w in _HYPHENATED_PAIR.findall(text.replace("-\n", "\x00"))}

    def join(match: re.Match) -> str:
        head, tail = match.group(1), match.group(2)
        joined = head + tail
        if joined.lower() in words and f"{head}-{tail}".lower() not in hyphenated:
            return joined
        return f"{head}-{tail}"

    return _subn(_HYPHEN_BREAK, join, text)


_DIALOGUE_START = re.compile(r"^[-–—]")


def join_wrapped_lines(text: str, min_fill: float = 0.8, min_width: int = 60) -> tuple[str, int]:
    """Join the PDF's hard-wrapped lines into paragraphs.

    The wrap width is estimated per text as the 90th percentile of its line lengths;
    a line at least ``min_fill`` of that width was wrapped and continues on the next
    line, unless the next line opens a dialogue (a dash) or is a heading (no lowercase
    letters). Texts whose width is under ``min_width`` (verse, lists) are left alone.
    Each paragraph ends up on one line.
    """
    lines = text.split("\n")
    lengths = sorted(len(line) for line in lines if line)
    if not lengths:
        return text, 0
    width = lengths[int(0.9 * (len(lengths) - 1))]
    if width < min_width:
        return text, 0
    threshold = min_fill * width
    pieces, joined = [], 0
    for line, following in zip(lines, lines[1:]):
        pieces.append(line)
        continues = (
            len(line) >= threshold
            and following
            and not _DIALOGUE_START.match(following)
            and any(ch.islower() for ch in following)
        )
        pieces.append(" " if continues else "\n")
        joined += bool(continues)
    pieces.append(lines[-1])
    return "".join(pieces), joined


CLEANING_RULES: tuple[tuple[str, Callable[[str], tuple[str, int]]], ...] = (
    ("normalize_unicode", normalize_unicode),
    ("normalize_whitespace", normalize_whitespace),
    ("drop_page_numbers", drop_page_numbers),
    ("drop_running_headers", drop_running_headers),
    ("rejoin_hyphenated_words", rejoin_hyphenated_words),
    ("join_wrapped_lines", join_wrapped_lines),
)


def clean_text_with_report(text: str) -> tuple[str, dict[str, int]]:
    """clean_text, plus the number of characters each rule removed or replaced."""
    report = {}
    for name, rule in CLEANING_RULES:
        text, report[name] = rule(text)
    return text, report


def clean_text(text: str) -> str:
    """The one cleaning every consumer uses (data prep, evaluation): all CLEANING_RULES in order."""
    return clean_text_with_report(text)[0]


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
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {value!r}")
    if val_fraction + test_fraction >= 0.5:
        raise ValueError("val_fraction + test_fraction must leave most of the corpus for training (< 0.5)")
    rng = random.Random(seed)
    sizes = catalog[size_column]
    total = float(sizes.sum())
    split = pd.Series("train", index=catalog.index, dtype=object)
    queues = {}
    for category, group in catalog.groupby("category", sort=True):
        order = list(group.index)
        rng.shuffle(order)
        queues[category] = order
    categories = sorted(queues)
    rng.shuffle(categories)

    def eligible(category: str) -> list:
        left_in_train = [i for i in queues[category] if split[i] == "train"]
        return left_in_train if len(left_in_train) > 1 else []

    targets = {"val": val_fraction * total, "test": test_fraction * total}
    filled = {"val": 0.0, "test": 0.0}

    def hungry() -> list[str]:
        return [s for s in targets if filled[s] < targets[s] * (1 - tolerance)]

    progressed = True
    while hungry() and progressed:
        progressed = False
        for category in categories:
            if not hungry():
                break
            # this category's next work goes to the split that is furthest below its target
            name = max(hungry(), key=lambda s: (targets[s] - filled[s]) / targets[s])
            fits = [i for i in eligible(category) if filled[name] + sizes[i] <= targets[name] * (1 + tolerance)]
            if fits:
                split[fits[0]] = name
                filled[name] += sizes[fits[0]]
                progressed = True
    for name in targets:
        if filled[name] == 0:
            candidates = [i for c in categories for i in eligible(c)]
            if candidates:
                split[min(candidates, key=lambda i: (sizes[i], i))] = name
    return split


# ============================================================================ the prepared dataset


@dataclass
class PreparedDataset:
    """A processed dataset on disk: its folder, catalog and meta.json contents."""

    path: Path
    catalog: pd.DataFrame
    meta: dict
    rewritten: bool = field(default=True)

    def cleaned_texts(self) -> pd.Series:
        """Each work's cleaned text, read back from the split files, indexed by (category, work)."""
        texts = {}
        for split in SPLITS:
            members = self.catalog[self.catalog["split"] == split]
            if members.empty:
                continue
            blob = (self.path / f"{split}.bin").read_bytes()
            for row in members.itertuples():
                texts[(row.category, row.work)] = blob[row.offset : row.offset + row.cleaned_bytes].decode("utf-8")
        return pd.Series(texts, name="text").rename_axis(["category", "work"])

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
    progress: bool = True,
) -> PreparedDataset:
    """Fetch/read, clean, catalog, split and encode a corpus into ``data/processed/<dataset>/``.

    ``max_works_per_category`` keeps only the smallest works of each category (quick
    runs). Re-running with the same inputs and settings rewrites nothing.
    """
    root = Path(data_root) if data_root is not None else data_dir()
    dataset = dataset or (Path(str(source)).stem if str(source) != "machado" else "machado")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", dataset):
        raise ValueError(f"dataset must be a simple folder name (letters, digits, . _ -), got {dataset!r}")
    raw_dir = root / "raw" / "machado" if str(source) == "machado" else None
    works, info = load_works(
        source, mirror=mirror, raw_dir=raw_dir, text_column=text_column, decode_errors=decode_errors, progress=progress
    )
    if max_works_per_category is not None:
        works = (
            works.sort_values(["bytes", "work"])
            .groupby("category", sort=False)
            .head(max_works_per_category)
            .sort_values(["category", "work"])
            .reset_index(drop=True)
        )
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
    fingerprint = hashlib.sha256(
        json.dumps({"works": sorted(zip(works["category"], works["work"], works["sha256"])), **settings}).encode()
    ).hexdigest()
    out = root / "processed" / dataset
    existing = _load_if_current(out, fingerprint)
    if existing is not None:
        return existing

    catalog, cleaned = build_catalog(works, progress=progress)
    catalog["split"] = assign_splits(catalog, val_fraction, test_fraction, split_seed)
    counts = catalog["split"].value_counts()
    missing = [s for s in SPLITS if counts.get(s, 0) == 0 or catalog.loc[catalog["split"] == s, "cleaned_bytes"].sum() == 0]
    if missing:  # checked before anything is written: an earlier prepared dataset stays as it was
        raise CorpusError(
            f"the corpus {source!s} has {len(catalog)} work(s) with text; the {' and '.join(missing)} split(s) would "
            "get no text. Splits hold whole works and every category keeps one in train, so give at least three "
            "non-empty works (e.g. one more in a category that has two)"
        )
    separator = len(SEPARATOR.encode())
    catalog["offset"] = 0
    encoded = {}
    for split in SPLITS:
        members = catalog.index[catalog["split"] == split]
        blobs = [cleaned[i].encode("utf-8") for i in members]
        offsets = np.cumsum([0] + [len(b) + separator for b in blobs[:-1]]).tolist() if blobs else []
        catalog.loc[members, "offset"] = offsets
        encoded[split] = SEPARATOR.encode().join(blobs)

    meta = {
        "dataset": dataset,
        "tokenizer": "bytes (UTF-8)",
        "vocab_size": 256,
        "dtype": "uint8",
        "separator": SEPARATOR,
        "splits": {
            s: {"bytes": len(encoded[s]), "works": int((catalog["split"] == s).sum()), "sha256": hashlib.sha256(encoded[s]).hexdigest()}
            for s in SPLITS
        },
        "source": info,
        **settings,
        "fingerprint": fingerprint,
    }
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        atomic_write(out / f"{split}.bin", lambda f, blob=encoded[split]: f.write(blob))
    atomic_write(out / "catalog.parquet", lambda f: catalog.to_parquet(f, index=False))
    meta_json = json.dumps(meta, indent=2, ensure_ascii=False).encode()
    atomic_write(out / "meta.json", lambda f: f.write(meta_json))  # last: marks completion
    return PreparedDataset(out, catalog, meta, rewritten=True)


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
        raise CorpusError(f"no prepared dataset at {folder}; run notebooks/01_data_prep.ipynb or moelab.data.prepare_dataset()")
    meta = json.loads((folder / "meta.json").read_text())
    return PreparedDataset(folder, pd.read_parquet(folder / "catalog.parquet"), meta, rewritten=False)


def load_split(dataset: str, split: str, data_root: str | os.PathLike | None = None) -> np.memmap:
    """A split's bytes as a read-only uint8 memory map."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    prepared = load_dataset(dataset, data_root)
    path = prepared.path / f"{split}.bin"
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty: the {split} split has no works; use a larger corpus or other fractions")
    return np.memmap(path, dtype=np.uint8, mode="r")


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
