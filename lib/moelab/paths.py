"""Where the workspace keeps things, the same from a notebook, papermill or a script.

The project root is found by walking up from the working directory to the folder
whose pyproject.toml names moelab (JupyterLab and nbval run in notebooks/, papermill
wherever it is started), falling back to this package's checkout. Environment
variables override each place: MOELAB_DATA_DIR, MOELAB_REPORTS_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path


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
