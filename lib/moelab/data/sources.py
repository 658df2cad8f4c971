"""Corpus sources: the Machado manifest, fetching it verified, and reading any corpus into works.

Sources: ``"machado"`` (the default; the complete works of Machado de Assis), a
folder of ``.txt`` files (sub-folders become categories), or a CSV/parquet file with
a text column. Machado's works come from ``data/raw/machado`` when already there and
sha256-verified, else from a mirror folder (``MOELAB_CORPUS_MIRROR`` or ``mirror=``),
else they are downloaded with pooch from the upstream repository at a pinned commit.
A file whose sha256 does not match the manifest is never used.

Bytes that are not valid UTF-8 are reported with the file and byte offset and handled
by a policy (``decode_errors``): ``"replace"`` (default: each bad sequence becomes
U+FFFD), ``"strict"`` (stop with an error), or ``"latin-1"`` (read the whole file as
ISO-8859-1, for corpora saved in that encoding).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from tqdm.auto import tqdm

from moelab.paths import atomic_write, data_dir, sha256_file

MACHADO_REPO = "luxedo/dataset-machado-de-assis"
MACHADO_COMMIT = "a13ca4a72f268f46db64804a67930d4c0f6db8e7"
MACHADO_BASE_URL = f"https://raw.githubusercontent.com/{MACHADO_REPO}/{MACHADO_COMMIT}/"
MIRROR_ENV = "MOELAB_CORPUS_MIRROR"
DECODE_POLICIES = ("replace", "strict", "latin-1")


class CorpusError(RuntimeError):
    """The corpus could not be fetched or read; the message says what to do."""


# ============================================================================ fetching


def machado_manifest() -> pd.DataFrame:
    """The project's copy of the upstream manifest: path, category, work, bytes, sha256, in_mirror."""
    with resources.files("moelab.data").joinpath("corpora/machado.csv").open("rb") as f:
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
            "as txt/<category>/<work>.txt (a copy of the upstream corpus), or unset it to download."
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
    found = sha256_file(source)
    if found != expected:
        raise CorpusError(
            f"mirror file {source} does not match its sha256 (expected {expected[:12]}…, found {found[:12]}…). "
            f"Replace it with the file from {MACHADO_REPO} at commit {MACHADO_COMMIT[:10]}, or remove it from "
            "the mirror (the work is then reported as missing)."
        )
    with open(source, "rb") as f:
        shutil.copyfileobj(f, target, 1 << 20)


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
                    f"set {MIRROR_ENV}=/path/to/machado (a folder with txt/<category>/<work>.txt) or pass mirror=... ."
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
        return _machado_works(raw_dir, mirror, decode_errors, progress)
    path = Path(source)
    if path.is_dir():
        return _folder_works(path, decode_errors), {"kind": "folder", "path": str(path.resolve()), "missing_works": []}
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


def _machado_works(
    raw_dir: str | os.PathLike | None, mirror: str | os.PathLike | None, decode_errors: str, progress: bool
) -> tuple[pd.DataFrame, dict]:
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


def _folder_works(path: Path, decode_errors: str) -> pd.DataFrame:
    """Every .txt file under path is a work; its sub-folder is its category."""
    files = sorted(path.rglob("*.txt"))
    if not files:
        raise CorpusError(f"no .txt files under {path}; a folder corpus is .txt files (sub-folders = categories)")
    rows = []
    for file in files:
        relative = file.relative_to(path)
        category = relative.parent.as_posix() if relative.parent != Path(".") else "uncategorized"
        rows.append(_work_row(category, file.stem, file.read_bytes(), relative.as_posix(), decode_errors))
    return _works_frame(rows)


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

