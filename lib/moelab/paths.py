"""Where the workspace keeps things, the same from a notebook, papermill or a script.

The project root is found by walking up from the working directory to the folder
whose pyproject.toml names moelab (JupyterLab and nbval run in notebooks/, papermill
wherever it is started), falling back to this package's checkout. Environment
variables override each place: MOELAB_DATA_DIR, MOELAB_REPORTS_DIR.
"""

from __future__ import annotations

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
