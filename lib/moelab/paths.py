"""Where the workspace keeps things, the same from a notebook, papermill or a script.

The project root is found by walking up from the working directory to the folder
whose pyproject.toml names moelab (JupyterLab and nbval run in notebooks/, papermill
wherever it is started), falling back to this package's checkout. Environment
variables override each place: MOELAB_DATA_DIR, MOELAB_REPORTS_DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def project_root() -> Path:
    for folder in (Path.cwd(), *Path.cwd().parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "moelab"' in pyproject.read_text(errors="replace"):
            return folder
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    return Path(os.environ.get("MOELAB_DATA_DIR") or project_root() / "data")


def reports_dir() -> Path:
    return Path(os.environ.get("MOELAB_REPORTS_DIR") or project_root() / "reports")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file so it is either complete or absent under its name, never half-written.

    ``write(f)`` fills a temporary file beside ``path``; it is flushed to disk and
    renamed over ``path`` (an atomic step), and the rename itself is made durable.
    On any error the temporary file is removed and an earlier ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode any file the user writes gets (0666 & ~umask)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_write_json(path: str | os.PathLike, values: object) -> Path:
    """``values`` as indented JSON through :func:`atomic_write` (values JSON cannot hold become strings)."""
    data = json.dumps(values, indent=2, default=str).encode()
    return atomic_write(path, lambda f: f.write(data))


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_run_name(name: str, what: str = "run_name") -> str:
    """A run name is a plain folder name (it names data/checkpoints/<run>/ and reports/<run>/)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"{what} must be a plain folder name (no '/', not starting with '.'), got {name!r}; "
            "for example 'default' or 'cpu-seed2'"
        )
    return name
