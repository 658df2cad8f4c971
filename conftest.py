"""Test-session settings, shared by the unit tests and the notebook tests (nbval kernels inherit them).

Notebooks run in the `tiny` profile, write into a temporary data folder (never the
user's data/), and take the Machado corpus from the shared offline mirror when one is
next to the checkout (CI points MOELAB_CORPUS_MIRROR at it). nbval cannot pass
parameters, so the committed notebooks (profile=None) get the tiny profile from
MOELAB_PROFILE; tests that run notebooks through papermill pass profile="tiny" as an
ordinary parameter.
"""

import os
import tempfile
from pathlib import Path

_shared_mirror = Path(__file__).resolve().parent.parent / "shared" / "data" / "machado"
os.environ.setdefault("MOELAB_PROFILE", "tiny")
os.environ.setdefault("MOELAB_DATA_DIR", tempfile.mkdtemp(prefix="moelab-test-data-"))
os.environ.setdefault("MOELAB_REPORTS_DIR", tempfile.mkdtemp(prefix="moelab-test-reports-"))
if _shared_mirror.is_dir():
    os.environ.setdefault("MOELAB_CORPUS_MIRROR", str(_shared_mirror))
