"""The registry of runs: status.json through a run's life, and the table of every run."""

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from moelab.config.presets import preset
from moelab.runs.registry import closest_preset, read_status, runs_table, set_status
from moelab.train.trainer import Trainer


def tiny_run(name, toy_dataset, **changes):
    p = preset("tiny")
    return Trainer(p.model, p.train.replace(**changes), name, dataset=toy_dataset, progress=False)


def test_a_finished_run_is_one_row_that_agrees_with_its_metrics(toy_dataset):
    trainer = tiny_run("reg-done", toy_dataset, seed=7, max_steps=12)
    result = trainer.fit()
    row = runs_table().loc["reg-done"]
    metrics = pd.read_parquet(trainer.reports / "metrics.parquet")
    val = metrics["val_bpb"].dropna()
    assert row["status"] == "finished" and row["dataset"] == toy_dataset
    assert (row["preset"], row["changes"]) == ("tiny", "max_steps=12, seed=7")  # only what differs from tiny
    assert (row["steps"], row["tokens"]) == (12, metrics["tokens"].iloc[-1]) == (result.steps, result.tokens)
    assert row["final_val_bpb"] == pytest.approx(val.iloc[-1]) and row["best_val_bpb"] == pytest.approx(val.min())
    assert row["tokens_per_s"] == pytest.approx(row["tokens"] / metrics["elapsed_s"].iloc[-1])
    assert row["moelab"] and row["cpu"] and row["threads"] >= 1 and row["started"] <= row["ended"]
    config = json.loads((trainer.reports / "config.json").read_text())
    assert config["git_commit"] is None or len(config["git_commit"].removesuffix("+dirty")) == 40


def test_failed_interrupted_and_killed_runs_say_so(toy_dataset, monkeypatch):
    failing = tiny_run("reg-failed", toy_dataset)
    monkeypatch.setattr(Trainer, "_train_step", lambda self: (_ for _ in ()).throw(RuntimeError("out of luck")))
    with pytest.raises(RuntimeError):
        failing.fit()
    stopped = tiny_run("reg-stopped", toy_dataset)
    monkeypatch.setattr(Trainer, "_train_step", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    status = read_status(failing.reports)
    assert status["status"] == "failed" and "RuntimeError: out of luck" in status["error"]
    assert read_status(stopped.reports)["status"] == "interrupted"
    # a run whose process died while running (kill -9): its status.json still says running
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    set_status(stopped.reports, "running", pid=int(dead.stdout))
    assert read_status(stopped.reports)["status"] == "interrupted"
    set_status(stopped.reports, "running", pid=os.getpid())  # this process is alive
    assert read_status(stopped.reports)["status"] == "running"
    table = runs_table()
    assert table.loc["reg-failed", "status"] == "failed" and table.loc["reg-failed", "steps"] == 0
    assert math.isnan(table.loc["reg-failed", "final_val_bpb"])


def test_a_trainer_that_refuses_an_existing_run_leaves_its_status_alone(toy_dataset):
    tiny_run("reg-keep", toy_dataset, max_steps=4).fit()
    with pytest.raises(FileExistsError):
        tiny_run("reg-keep", toy_dataset, max_steps=4).fit()  # neither resume nor overwrite
    assert read_status(tiny_run("reg-keep", toy_dataset).reports)["status"] == "finished"


def test_finished_runs_are_read_from_their_json_files_alone(toy_dataset, monkeypatch):
    """What keeps the table fast with hundreds of runs: no metrics file is opened for a finished run."""
    tiny_run("reg-fast", toy_dataset, max_steps=4).fit()
    read = pd.read_parquet  # other tests' unfinished runs in the same folder may be read; this finished one not

    def guarded(path, *args, **kwargs):
        if "reg-fast" in str(path):
            pytest.fail("read the metrics file of a finished run")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", guarded)
    assert runs_table().loc["reg-fast", "steps"] == 4


def test_closest_preset_names_the_fields_that_differ():
    cpu = preset("cpu")
    assert closest_preset(cpu.model, cpu.train) == ("cpu", [])
    name, changes = closest_preset(cpu.model.replace(n_layers=6), cpu.train.replace(lr=1e-3))
    assert name == "cpu" and changes == ["n_layers=6", "lr=0.001"]


def test_status_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        set_status(tmp_path, "done")


def test_command_line_prints_the_table(toy_dataset):
    tiny_run("reg-cli", toy_dataset, max_steps=4).fit()
    done = subprocess.run([sys.executable, "-m", "moelab", "runs"], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("reg-cli"))
    assert "finished" in line and "tiny" in line


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_metric_rows_go_to_tensorboard_once_per_step_also_after_a_resume(toy_dataset):
    from moelab.runs.registry import tensorboard_tag

    columns = ("val_bpb", "train_bpb", "ce_loss", "loss", "lr", "load_l1_e3", "load_cv_l1", "maxvio_l1")
    assert [tensorboard_tag(c) for c in columns] == [
        "bpb/val", "bpb/train", "loss/ce", "loss/loss", "train/lr", "load/l1_e3", "load/cv_l1", "load/maxvio_l1",
    ]  # fmt: skip
    first = tiny_run("reg-tb", toy_dataset, max_steps=20, checkpoint_every=5)
    first.fit(stop_after_steps=13)
    (first.checkpoints / "ckpt_0000013.pt").unlink()  # as if killed before it: step 12 is logged, then redone
    assert [s for s, _ in _scalars(first.reports, "bpb/train")][-1] == 12  # logged every 2 steps
    resumed = tiny_run("reg-tb", toy_dataset, max_steps=20, checkpoint_every=5)
    resumed.fit(resume=True)
    metrics = pd.read_parquet(resumed.reports / "metrics.parquet")
    logged = _scalars(resumed.reports, "bpb/train")
    assert [s for s, _ in logged] == metrics["step"].tolist()  # each step once, in order
    assert [v for _, v in logged] == pytest.approx(metrics["train_bpb"].tolist(), rel=1e-6)
    val = metrics.dropna(subset=["val_bpb"])
    logged_val = _scalars(resumed.reports, "bpb/val")
    assert [s for s, _ in logged_val] == val["step"].tolist() == [10, 20]
    assert [v for _, v in logged_val] == pytest.approx(val["val_bpb"].tolist(), rel=1e-6)
    tiny_run("reg-tb", toy_dataset, max_steps=4).fit(overwrite=True)  # a new run under the name: old events go
    assert [s for s, _ in _scalars(resumed.reports, "bpb/train")] == [2, 4]
