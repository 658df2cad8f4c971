"""A run's files: where they live, what they record, reading a finished run back.

A run named ``NAME`` keeps its checkpoints in ``data/checkpoints/NAME/ckpt_<step>.pt``
and its records in ``reports/NAME/`` (``config.json``, ``metrics.parquet``,
``routing.parquet``); ``MOELAB_DATA_DIR`` / ``MOELAB_REPORTS_DIR`` move both places.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from moelab.runs.checkpoint import CheckpointError
from moelab.paths import atomic_write, data_dir, reports_dir

RECORD_FILES = ("metrics.parquet", "routing.parquet")


@dataclass
class TrainResult:
    """What a training run ended with: its size, final validation loss, last checkpoint and metric rows."""

    run_name: str
    steps: int
    tokens: int
    elapsed_s: float
    val_loss: float
    val_bpb: float
    checkpoint: Path
    metrics: pd.DataFrame


def checkpoint_dir(run_name: str) -> Path:
    return data_dir() / "checkpoints" / run_name


def run_reports_dir(run_name: str) -> Path:
    return reports_dir() / run_name


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    return sorted(Path(folder).glob("ckpt_*.pt"))


def latest_checkpoint(run_or_folder: str | os.PathLike) -> Path:
    """The newest checkpoint of a run (a run name, or its checkpoint folder)."""
    folder = Path(run_or_folder)
    if not folder.is_dir():
        folder = checkpoint_dir(str(run_or_folder))
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(
            f"no checkpoints in {folder}; train the run first (notebook 02 or python -m moelab.train)"
        )
    return found[-1]


def result_from_files(run_name: str) -> TrainResult:
    """A finished run's TrainResult, read back from its metrics and checkpoints (e.g. after torchrun)."""
    metrics = pd.read_parquet(run_reports_dir(run_name) / "metrics.parquet")
    last = metrics.iloc[-1]
    evaluated = metrics.dropna(subset=["val_loss"])
    val_loss = float(evaluated["val_loss"].iloc[-1]) if len(evaluated) else math.nan
    val_bpb = float(evaluated["val_bpb"].iloc[-1]) if len(evaluated) else math.nan  # per byte, whatever the tokenizer
    return TrainResult(
        run_name,
        int(last["step"]),
        int(last["tokens"]),
        float(last["elapsed_s"]),
        val_loss,
        val_bpb,
        latest_checkpoint(run_name),
        metrics,
    )


def prepare_folders(*folders: Path) -> None:
    """Fail before training, not after an hour, when the output folders cannot be written.

    Also removes temporary files a killed process left behind (never taken as checkpoints).
    """
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder) as probe:
                probe.write(b"moelab write check")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot write to {folder} ({err.strerror or err}); free disk space or point "
                "MOELAB_DATA_DIR / MOELAB_REPORTS_DIR at a writable folder. Nothing was trained or changed",
            ) from err
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def clear_run(checkpoints: Path, reports: Path) -> None:
    """Delete a run's checkpoints, metric records and TensorBoard events (training it again with ``overwrite``)."""
    for path in list_checkpoints(checkpoints):
        path.unlink()
    for name in RECORD_FILES:
        (reports / name).unlink(missing_ok=True)
    shutil.rmtree(reports / "tensorboard", ignore_errors=True)


def read_records(path: Path, up_to_step: int) -> list[dict]:
    """The rows of a metrics or routing file up to a step (none if the file is absent)."""
    if not path.is_file():
        return []
    frame = pd.read_parquet(path)
    return frame[frame["step"] <= up_to_step].to_dict("records")


def write_records(reports: Path, run_name: str, rows: list[dict], routing_rows: list[dict]) -> None:
    """Write metrics.parquet and routing.parquet atomically (each file complete or the previous version)."""
    try:
        if rows:
            metrics = pd.DataFrame(rows)
            atomic_write(reports / "metrics.parquet", lambda f: metrics.to_parquet(f, index=False))
        if routing_rows:
            routing = pd.DataFrame(routing_rows)
            atomic_write(reports / "routing.parquet", lambda f: routing.to_parquet(f, index=False))
    except OSError as err:
        raise OSError(
            err.errno,
            f"could not write the metrics of {run_name} to {reports} ({err.strerror or err}); "
            "the files there are the previous complete versions. Free disk space and resume",
        ) from err


def list_runs(root: str | os.PathLike | None = None) -> list[str]:
    """Runs that have at least one checkpoint under data/checkpoints/, newest first."""
    root = Path(root) if root is not None else data_dir() / "checkpoints"
    checkpoints = {folder.name: list_checkpoints(folder) for folder in root.glob("*") if folder.is_dir()}
    newest = {run: max(f.stat().st_mtime for f in files) for run, files in checkpoints.items() if files}
    return sorted(newest, key=newest.get, reverse=True)
