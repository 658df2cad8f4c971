"""The registry of runs: what each run records about itself, and one table of every run on disk.

The Trainer writes two small files into ``reports/<run>/``, and its metric rows as
TensorBoard scalars into ``reports/<run>/tensorboard/`` (:class:`TensorBoardLog`): ``config.json`` once, at the
start (configs, device, precision, moelab version, git commit, hardware, start time), and
``status.json`` whenever the run's state changes: ``running`` (with the process id and
host), then ``finished`` (with a summary: steps, tokens, wall time, final and best
validation bits per byte, end time), ``failed`` (with the error) or ``interrupted``
(Ctrl-C, or a session ended early by ``stop_after_steps``). A run left ``running`` by a
process that no longer exists on this host (killed, machine restarted) reads as
``interrupted``; a run trained before moelab wrote status.json reads as ``unknown``.

:func:`runs_table` reads only those two JSON files for a finished run, and the metrics
file only for the others, so it stays fast with hundreds of runs.
"""

from __future__ import annotations

import json
from importlib.metadata import version
import math
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig, config_diff
from moelab.paths import atomic_write_json, project_root, reports_dir

STATUSES = ("running", "finished", "interrupted", "failed")
COLUMNS = [
    "run", "status", "preset", "changes", "dataset", "seed", "steps", "tokens", "wall_s", "tokens_per_s",
    "final_val_bpb", "best_val_bpb", "moelab", "git_commit", "cpu", "threads", "gpu", "started", "ended",
]  # fmt: skip


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def hardware() -> dict[str, Any]:
    """CPU model, torch's thread count and the GPU (None without CUDA) of this process."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "threads": torch.get_num_threads(), "gpu": gpu}


def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def start_run(reports: Path, info: dict[str, Any], resumed: bool = False) -> None:
    """config.json (``info`` plus version, commit, hardware, start time) and status ``running``.

    A resumed run keeps the start time of its first session.
    """
    earlier = json.loads((reports / "config.json").read_text()) if resumed and (reports / "config.json").is_file() else {}
    started = earlier.get("started") or now()
    atomic_write_json(reports / "config.json", {**info, "moelab": version("moelab"), "git_commit": git_commit(),
                                         "hardware": hardware(), "started": started})  # fmt: skip
    atomic_write_json(reports / "status.json", {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                                         "started": started, "updated": now()})  # fmt: skip


def set_status(reports: Path, status: str, **fields: Any) -> None:
    """Record a new state of the run (``finished``, ``failed``, ``interrupted``) with extra fields."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    path = reports / "status.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_json(path, {**previous, **fields, "status": status, "updated": now()})


def summary(metrics: pd.DataFrame) -> dict[str, Any]:
    """Steps, tokens, wall time and final / best validation bits per byte from a run's metric rows."""
    if metrics.empty:
        return {"steps": 0, "tokens": 0, "wall_s": 0.0, "final_val_bpb": math.nan, "best_val_bpb": math.nan}
    last, val = metrics.iloc[-1], metrics["val_bpb"].dropna()
    return {
        "steps": int(last["step"]),
        "tokens": int(last["tokens"]),
        "wall_s": float(last["elapsed_s"]),
        "final_val_bpb": float(val.iloc[-1]) if len(val) else math.nan,
        "best_val_bpb": float(val.min()) if len(val) else math.nan,
    }


def read_status(folder: Path) -> dict[str, Any]:
    """A run's status.json, ``running`` turned ``interrupted`` when its process is gone from this host."""
    path = folder / "status.json"
    status = json.loads(path.read_text()) if path.is_file() else {"status": "unknown"}
    if status["status"] == "running" and status.get("host") == socket.gethostname() and not process_alive(status.get("pid")):
        status["status"] = "interrupted"
    return status


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def closest_preset(model: ModelConfig, train: TrainConfig, presets: dict | None = None) -> tuple[str, list[str]]:
    """The preset whose configs differ from a run's in the fewest fields, and those fields as ``field=value``.

    ``presets``: {name: Preset}, built once by :func:`runs_table` (default: every named preset).
    """
    presets = presets if presets is not None else _all_presets()
    diffs = {name: {**config_diff(p.model, model), **config_diff(p.train, train)} for name, p in presets.items()}
    name = min(diffs, key=lambda n: len(diffs[n]))
    return name, [f"{field}={new}" for field, (_, new) in diffs[name].items()]


def _all_presets() -> dict:
    from moelab.config.presets import PRESETS, preset

    return {name: preset(name) for name in PRESETS}


def run_row(folder: Path, presets: dict | None = None) -> dict[str, Any] | None:
    """One run's row of :func:`runs_table`, or None for a folder without a config.json (not a run)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config, status = json.loads(config_path.read_text()), read_status(folder)
    facts = status if "steps" in status else summary(_metrics(folder))
    try:
        train = TrainConfig.from_dict(config["train"])
        name, changes = closest_preset(ModelConfig.from_dict(config["model"]), train, presets)
    except ValueError:  # a config of another moelab version: no preset to compare with
        train, name, changes = None, None, []
    machine = config.get("hardware") or {}
    return {
        "run": folder.name, "status": status["status"], "preset": name, "changes": ", ".join(changes),
        "dataset": config.get("dataset"), "seed": train.seed if train else config["train"].get("seed"), "steps": facts["steps"], "tokens": facts["tokens"],
        "wall_s": facts["wall_s"], "tokens_per_s": facts["tokens"] / facts["wall_s"] if facts["wall_s"] else math.nan,
        "final_val_bpb": facts["final_val_bpb"], "best_val_bpb": facts["best_val_bpb"],
        "moelab": config.get("moelab"), "git_commit": config.get("git_commit"), "cpu": machine.get("cpu"),
        "threads": machine.get("threads"), "gpu": machine.get("gpu") or _gpu_of(config),
        "started": config.get("started") or status.get("started"), "ended": status.get("ended"),
    }  # fmt: skip


def _gpu_of(config: dict[str, Any]) -> str | None:
    """The GPU a run trained on, from the device fields (runs recorded before the hardware field)."""
    return config.get("device_name") if str(config.get("device", "")).startswith("cuda") else None


def _metrics(folder: Path) -> pd.DataFrame:
    path = folder / "metrics.parquet"
    columns = ["step", "tokens", "elapsed_s", "val_bpb"]
    return pd.read_parquet(path, columns=columns) if path.is_file() else pd.DataFrame(columns=columns)


def runs_table(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every run under ``reports/`` (or ``root``) as one DataFrame, newest first (see the module doc)."""
    root = Path(root) if root is not None else reports_dir()
    presets = _all_presets()
    rows = [row for f in sorted(root.glob("*")) if f.is_dir() and (row := run_row(f, presets)) is not None]
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"steps": "Int64", "tokens": "Int64", "seed": "Int64", "threads": "Int64"})
    return table.sort_values("started", ascending=False, na_position="last").set_index("run")


class TensorBoardLog:
    """A run's metric rows as TensorBoard scalars: ``tensorboard --logdir reports`` shows every run.

    Tags are grouped: ``bpb/…``, ``loss/…``, ``load/…`` (share of routed slots per layer and
    expert), ``train/…`` (the rest). A resumed run first drops the events after its
    checkpoint (``purge_step``), as it drops those metric rows, so no step appears twice.
    """

    def __init__(self, reports: Path, first_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(reports / "tensorboard"), purge_step=first_step + 1 if first_step else None,
                                    flush_secs=10)  # fmt: skip

    def __call__(self, row: dict[str, Any]) -> None:
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tensorboard_tag(name), value, row["step"])

    def close(self) -> None:
        self.writer.close()


def tensorboard_tag(column: str) -> str:
    """The TensorBoard tag of a metric column: ``val_bpb`` -> ``bpb/val``, ``load_l0_e3`` -> ``load/l0_e3``,
    ``maxvio_l0`` -> ``load/maxvio_l0``."""
    if column.startswith(("load_", "maxvio_")):  # the loads and their balance measures, side by side
        return "load/" + column.removeprefix("load_")
    for suffix in ("_bpb", "_loss"):
        if column.endswith(suffix):
            return f"{suffix[1:]}/{column.removesuffix(suffix)}"
    return f"loss/{column}" if column == "loss" else f"train/{column}"
