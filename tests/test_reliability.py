"""Reliability: exact resume across processes, kill -9, unwritable or full disks, and properties.

The kill test runs the real command line in a subprocess and kills it with SIGKILL at
random moments; after every kill the checkpoint folder must hold a loadable latest
checkpoint and the metrics file consecutive steps, and the resumed run must end with
exactly the losses of a run that was never interrupted.
"""

import errno
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moelab import ByteTokenizer, CheckpointError, load_checkpoint, preset
from moelab.paths import data_dir, reports_dir
from moelab.train.schedule import LRSchedule, WindowSchedule
from moelab.runs.files import list_checkpoints
from moelab.train.trainer import Trainer

COMPARED = ["step", "tokens", "window", "batch_sequences", "lr", "loss", "ce_loss", "aux_loss", "z_loss", "grad_norm"]


def train_cli(dataset: str, run: str, *args: str, wait: bool = True):
    command = [sys.executable, "-m", "moelab.train", "--preset", "tiny", "--dataset", dataset, "--run-name", run]
    command += ["--no-progress", *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done


def metrics_of(run: str) -> pd.DataFrame:
    return pd.read_parquet(reports_dir() / run / "metrics.parquet")


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a["step"].tolist() == b["step"].tolist()
    for column in COMPARED:
        assert a[column].tolist() == b[column].tolist(), column  # bit for bit
    pd.testing.assert_series_equal(a["val_bpb"], b["val_bpb"], check_exact=True)


def test_resume_in_a_new_process_is_bit_for_bit_an_uninterrupted_run(toy_dataset):
    """2N steps in one process == N steps, then a new process resuming for N more (dropout and router noise on)."""
    fields = ["--set", "max_steps=16", "--set", "log_every=1", "--set", "eval_every=4", "--set", "dropout=0.1"]
    train_cli(toy_dataset, "whole", *fields)
    train_cli(toy_dataset, "halves", *fields, "--stop-after-steps", "8")
    assert metrics_of("halves")["step"].max() == 8
    assert [p.name for p in list_checkpoints(data_dir() / "checkpoints" / "halves")][-1] == "ckpt_0000008.pt"
    train_cli(toy_dataset, "halves", *fields, "--resume")
    assert_same_rows(metrics_of("whole"), metrics_of("halves"))


def test_kill_9_at_random_moments_never_breaks_the_run(toy_dataset):
    rng = random.Random(2026)
    fields = ["--set", "max_steps=400", "--set", "log_every=1", "--set", "checkpoint_every=5", "--set", "eval_every=50"]
    folder = data_dir() / "checkpoints" / "killed"
    outcomes = []
    for trial in range(5):
        process = train_cli(toy_dataset, "killed", *fields, *(["--resume"] if trial else []), wait=False)
        already = {p.name for p in list_checkpoints(folder)}
        deadline = time.monotonic() + 120
        # wait until this process has written a checkpoint of its own, then kill it a random moment later
        while {p.name for p in list_checkpoints(folder)} <= already and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        outcomes.append(process.returncode)
        assert process.returncode in (-signal.SIGKILL, 0), process.stderr.read()
        checkpoints = list_checkpoints(folder)
        assert checkpoints, "a kill must never leave the run without a checkpoint"
        latest = load_checkpoint(checkpoints[-1])  # complete and loadable, never half-written
        steps = metrics_of("killed")["step"].tolist()
        assert steps == list(range(1, len(steps) + 1))  # no step duplicated or dropped
        assert latest["step"] <= steps[-1]  # metrics are written first, so never behind the checkpoint
    assert outcomes.count(-signal.SIGKILL) >= 3, outcomes  # the kills did land mid-run
    train_cli(toy_dataset, "killed", *fields, "--resume")
    train_cli(toy_dataset, "never-killed", *fields)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # leftovers of killed writes are gone
    assert_same_rows(metrics_of("never-killed"), metrics_of("killed"))


def test_unwritable_output_folder_fails_before_training(toy_dataset, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the reports folder should be")
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(blocker))
    p = preset("tiny")
    trainer = Trainer(p.model, p.train, "nowhere", dataset=toy_dataset, progress=False)
    with pytest.raises(OSError, match=r"cannot write to .*not-a-folder.*MOELAB_REPORTS_DIR.*Nothing was trained"):
        trainer.fit()
    assert blocker.read_text() == "a file where the reports folder should be"
    assert not list_checkpoints(trainer.checkpoints)


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(toy_dataset, monkeypatch):
    p = preset("tiny")
    train = p.train.replace(max_steps=20, checkpoint_every=5, log_every=1)
    saves = []
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 1:
            f.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    trainer = Trainer(p.model, train, "full-disk", dataset=toy_dataset, progress=False)
    with pytest.raises(CheckpointError, match=r"No space left on device.*Free disk space.*untouched"):
        trainer.fit()
    monkeypatch.setattr(torch, "save", real_save)
    assert [c.name for c in list_checkpoints(trainer.checkpoints)] == ["ckpt_0000005.pt"]
    assert load_checkpoint(trainer.checkpoints / "ckpt_0000005.pt")["step"] == 5
    assert not [c for c in trainer.checkpoints.iterdir() if c.name.endswith(".tmp")]
    resumed = Trainer(p.model, train, "full-disk", dataset=toy_dataset, progress=False).fit(resume=True)
    assert resumed.metrics["step"].tolist() == list(range(1, 21))


def test_stop_after_steps_must_be_positive(toy_dataset):
    p = preset("tiny")
    with pytest.raises(ValueError, match="stop_after_steps"):
        Trainer(p.model, p.train, "stop", dataset=toy_dataset, progress=False).fit(stop_after_steps=0)


# ---------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(1, 8), max_size=12))
def test_stream_decoding_in_any_chunks_equals_decoding_at_once(data, cuts):
    tok = ByteTokenizer()
    decoder = tok.stream_decoder()
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(decoder.feed(data[start : start + cut]))
        start += cut
    pieces.append(decoder.feed(data[start:]))
    pieces.append(decoder.flush())
    assert "".join(pieces) == data.decode("utf-8", errors="replace") == tok.decode(list(data))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_round_trips_through_bytes(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(1, 64),
    extra=st.integers(0, 256),
    step=st.integers(1, 64),
    warmup=st.floats(0, 1),
    batch=st.integers(1, 64),
    progress=st.lists(st.floats(0, 1), min_size=2, max_size=20),
)
def test_window_schedule_properties(start, extra, step, warmup, batch, progress):
    schedule = WindowSchedule(start, start + extra, step, warmup)
    windows = [schedule.window(p) for p in sorted(progress)]
    assert all(a <= b for a, b in zip(windows, windows[1:]))  # never shrinks
    assert all(w in schedule.windows for w in windows)  # start + i * step, or the maximum
    assert schedule.window(1.0) == start + extra  # the full window by the end
    if warmup > 0:
        assert schedule.window(0.0) == (start if extra else start + extra)
    for w in windows:
        tokens = schedule.batch_sequences(w, batch, "tokens") * w
        assert batch * (start + extra) - w < tokens <= batch * (start + extra)  # constant up to one sequence
        assert schedule.batch_sequences(w, batch, "sequences") == batch


@settings(max_examples=200, deadline=None)
@given(
    lr=st.floats(1e-6, 1.0),
    warmup=st.integers(0, 50),
    min_ratio=st.one_of(st.just(0.0), st.floats(1e-6, 1)),  # not subnormal: lr · 5e-324 underflows to 0
    step=st.integers(0, 1000),
)
def test_learning_rate_stays_between_its_floor_and_peak(lr, warmup, min_ratio, step):
    schedule = LRSchedule(lr, warmup, min_ratio)
    for progress in (0.0, 0.3, 1.0):
        value = schedule(step, progress)
        assert 0 <= value <= lr * (1 + 1e-12)
        assert value > 0 or (progress == 1.0 and min_ratio == 0)  # zero only at the end of a cosine to 0
        if step + 1 >= warmup:
            assert value >= lr * min_ratio * (1 - 1e-12)


@pytest.mark.parametrize("start,maximum,step", [(0, 8, 1), (9, 8, 1), (4, 8, 0)])
def test_window_schedule_rejects_bad_shapes(start, maximum, step):
    with pytest.raises(ValueError, match="window"):
        WindowSchedule(start, maximum, step, 0.5)


def test_leftover_temporary_files_are_not_checkpoints(tmp_path):
    (tmp_path / ".ckpt_0000010.pt.abc.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "ckpt_0000005.pt").write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_0000005.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_of_any_file_the_user_writes(toy_dataset, tmp_path, umask):
    import os
    import stat

    from moelab.paths import atomic_write, current_umask

    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("plain")
        expected = mode(tmp_path / "plain.txt")
        assert expected == 0o666 & ~umask
        atomic_write(tmp_path / "atomic.bin", lambda f: f.write(b"atomic"))
        assert mode(tmp_path / "atomic.bin") == expected
        run = f"umask-{umask:03o}"
        Trainer(preset("tiny").model, preset("tiny").train.replace(max_steps=2), run, dataset=toy_dataset, progress=False).fit()
        for name in ("metrics.parquet", "config.json", "routing.parquet"):
            assert mode(reports_dir() / run / name) == expected, name
    finally:
        os.umask(previous)
    assert current_umask() == previous
