"""Bad inputs, everywhere they enter: each gets a message naming the input, what is wrong and what to do.

One table per entry point: config fields, corpus and splits, prompts, run names and
checkpoints, the command line, and the notebooks' papermill parameters.
"""

import subprocess
import sys

import numpy as np
import papermill
import pytest

from moelab import CheckpointError, ModelConfig, TrainConfig, latest_checkpoint, load_model, preset
from moelab.data import CorpusError, load_works, prepare_dataset
from moelab.generate.sampling import prepare_prompt
from moelab.data.batches import WindowSampler, fixed_windows
from moelab.train.trainer import Trainer
from moelab.views.notebook import PROFILE_SETTINGS
from moelab.views.setup import data_prep_settings, forecasting_setup, resolve_layer, training_setup, utilization_setup

from .test_notebooks import notebook_defaults, run_notebook

CONFIGS = [
    ("n_embd=0", lambda: ModelConfig(n_embd=0), "n_embd: must be a positive integer"),
    ("n_layers=-2", lambda: ModelConfig(n_layers=-2), "n_layers: must be a positive integer"),
    (
        "n_embd not divisible by n_heads",
        lambda: ModelConfig(n_embd=30, n_heads=4),
        "n_embd: must be divisible by n_heads=4",
    ),
    ("top_k > n_experts", lambda: ModelConfig(n_experts=4, top_k=5), r"top_k: must be an integer in 1\.\.n_experts=4"),
    ("negative n_experts", lambda: ModelConfig(n_experts=-1), "n_experts: must be an integer >= 0"),
    ("dense without feed-forward", lambda: ModelConfig(n_experts=0), "n_common_experts: must be >= 1 when n_experts=0"),
    ("dropout=1", lambda: ModelConfig(dropout=1.0), r"dropout: must be in \[0, 1\)"),
    ("dropout as text", lambda: ModelConfig(dropout="0.1"), "dropout: must be a number, got '0.1'"),
    ("unknown pos_encoding", lambda: ModelConfig(pos_encoding="alibi"), "pos_encoding: must be one of learned"),
    ("capacity_factor=0", lambda: ModelConfig(capacity_factor=0), "capacity_factor: must be > 0 or None"),
    ("lr=0", lambda: TrainConfig(lr=0), "lr: must be > 0, got 0"),
    ("lr<0", lambda: TrainConfig(lr=-1e-3), "lr: must be > 0"),
    ("lr as text", lambda: TrainConfig(lr="fast"), "lr: must be a number, got 'fast'"),
    ("batch_size=0", lambda: TrainConfig(batch_size=0), "batch_size: must be a positive integer"),
    ("negative max_steps", lambda: TrainConfig(max_steps=-5), "max_steps: must be a positive integer"),
    ("no budget", lambda: TrainConfig(max_steps=None), "give a budget"),
    ("max_minutes=0", lambda: TrainConfig(max_minutes=0), "max_minutes: must be > 0"),
    ("unknown batch_keep", lambda: TrainConfig(batch_keep="bytes"), "batch_keep: must be one of sequences, tokens"),
    ("unknown precision", lambda: TrainConfig(precision="fp16"), "precision: must be one of auto, fp32, bf16"),
    (
        "warmup fraction > 1",
        lambda: TrainConfig(window_warmup_fraction=1.5),
        r"window_warmup_fraction: must be in \[0, 1\]",
    ),
    ("unknown field", lambda: TrainConfig.from_dict({"learning_rat": 0.1}), "unknown TrainConfig field.*learning_rat"),
    ("unknown preset", lambda: preset("huge"), "preset: unknown name 'huge'; choose one of seed, cpu, long, tiny"),
]


@pytest.mark.parametrize("make,match", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_window_schedule_starting_beyond_its_maximum(toy_dataset):
    p = preset("tiny")
    with pytest.raises(ValueError, match="current_context_window: must be <= the model's context_window=16, got 32"):
        Trainer(p.model, p.train.replace(current_context_window=32), "bad-window", dataset=toy_dataset)


def test_empty_corpus_files(tmp_path):
    (tmp_path / "romance").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "romance" / name).write_text("")
    with pytest.raises(CorpusError, match="empty"):
        prepare_dataset(tmp_path, "empty-files", progress=False)
    assert not (tmp_path / "processed").exists()


def test_corpus_smaller_than_one_window():
    with pytest.raises(ValueError, match="training split has 10 tokens, fewer than a window of 16"):
        WindowSampler(np.zeros(10, dtype=np.uint8), seed=0).batch(2, 16)
    with pytest.raises(ValueError, match="validation split has 5 tokens, fewer than one window of 16.*larger"):
        fixed_windows(np.zeros(5, dtype=np.uint8), 16, 8)


def test_split_with_no_works(tmp_path):
    (tmp_path / "conto").mkdir()
    (tmp_path / "conto" / "only.txt").write_text("Uma só obra não dá três partes. " * 20)
    with pytest.raises(CorpusError, match="works"):
        prepare_dataset(tmp_path, "one-work", progress=False)


def test_non_utf8_corpus_file_under_strict_policy(tmp_path):
    (tmp_path / "conto").mkdir()
    (tmp_path / "conto" / "latin1.txt").write_bytes("Não há".encode("latin-1"))
    with pytest.raises(
        CorpusError, match=r"latin1\.txt: 2 invalid UTF-8 sequence.*first at byte offset 1 \(e3\).*decode_errors"
    ):
        load_works(tmp_path, decode_errors="strict", progress=False)


def test_prompts_with_invalid_utf8():
    raw = prepare_prompt(b"Capitu \xff\xfe olhou", 64)
    assert raw.ids[0].tolist() == list(b"Capitu \xff\xfe olhou")  # the model sees the bytes as given
    assert raw.text == "Capitu \ufffd\ufffd olhou" and "not valid UTF-8 (byte 7: ff)" in " ".join(raw.notes)
    escaped = prepare_prompt(b"Capitu \xff".decode("utf-8", errors="surrogateescape"), 64)
    assert escaped.ids[0].tolist() == list(b"Capitu \xff")
    with pytest.raises(ValueError, match="lone surrogate"):
        prepare_prompt("Capitu \ud800", 64)
    with pytest.raises(TypeError, match="prompt must be str or bytes"):
        prepare_prompt(42, 64)


def test_nonexistent_run_and_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints in .*no-such-run; train the run first"):
        latest_checkpoint("no-such-run")
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        load_model(tmp_path / "missing.pt")


CLI = [
    (["--preset", "huge"], "error: preset: unknown name 'huge'"),
    (["--set", "lr=fast"], "error: lr: must be a number, got 'fast'"),
    (["--set", "learning_rat=0.1"], "error: unknown field(s) learning_rat. Model fields:"),
    (["--set", "lr"], "--set expects FIELD=VALUE"),
    (["--set", "n_experts=2", "--set", "top_k=3"], "top_k: must be an integer in 1..n_experts=2"),
    (["--resume", "--dataset", "no-such-dataset"], "no-such-dataset"),
    (["--stop-after-steps", "x"], "invalid int value"),
]


@pytest.mark.parametrize("args,message", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_command_line_errors(args, message, toy_dataset):
    command = [sys.executable, "-m", "moelab.train", "--preset", "tiny", "--run-name", "cli-bad"]
    if "--dataset" not in args:
        command += ["--dataset", toy_dataset]
    done = subprocess.run(command + args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


NOTEBOOK_PARAMETERS = [
    ("01_data_prep.ipynb", {"decode_errors": "ignore"}, "parameter decode_errors='ignore' is not one of"),
    ("02_train.ipynb", {"if_exists": "maybe"}, "parameter if_exists='maybe' is not one of"),
    ("03_expert_utilization.ipynb", {"run_name": "no-such-run"}, "no checkpoints in .*no-such-run"),
    ("04_sampling.ipynb", {"run_name": "no-such-run"}, "no checkpoints in .*no-such-run"),
    ("05_experiments.ipynb", {"study": "no-such-study"}, "neither a spec file .* built-in studies: "),
]


@pytest.mark.parametrize("name,parameters,match", NOTEBOOK_PARAMETERS, ids=[n for n, _, _ in NOTEBOOK_PARAMETERS])
def test_bad_notebook_parameters_stop_at_the_check(name, parameters, match, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match=match):
        run_notebook(name, tmp_path, **parameters)


# The notebooks' setup calls (moelab.views.setup), with each notebook's defaults and one bad value: the message the
# notebook stops with. The dataset-free ones never reach the dataset: the checks come first.
SETUPS = [
    ("01_data_prep.ipynb", data_prep_settings, {"decode_errors": "ignore"}, "parameter decode_errors='ignore' is not one of"),
    ("01_data_prep.ipynb", data_prep_settings, {"val_fraction": 0.9}, r"parameter val_fraction=0\.9 must be a number between 0 and 0\.5"),
    ("01_data_prep.ipynb", data_prep_settings, {"test_fraction": "0.1"}, "parameter test_fraction='0.1' must be a number"),
    ("01_data_prep.ipynb", data_prep_settings, {"tokenizer": "bpe", "vocab_size": 100}, r"vocab_size.*>= 257"),
    ("02_train.ipynb", training_setup, {"if_exists": "maybe"}, "parameter if_exists='maybe' is not one of 'error', 'resume', 'overwrite'"),
    ("02_train.ipynb", training_setup, {"nproc": 0}, r"parameter nproc=0 must be a positive integer \(processes for torchrun\)"),
    ("02_train.ipynb", training_setup, {"profile": "huge"}, "parameter profile='huge' is not one of 'default', 'tiny'"),
    ("02_train.ipynb", training_setup, {"dataset": "no-such-dataset"}, "no prepared dataset at .*no-such-dataset; run notebooks/01"),
    ("03_expert_utilization.ipynb", utilization_setup, {"run_name": "no-such-run"}, "no checkpoints in .*no-such-run"),
    ("06_forecasting.ipynb", forecasting_setup, {"benchmark": ["fpp2/a10", "no/such"]}, r"unknown benchmark series \['no/such'\]"),
    ("06_forecasting.ipynb", forecasting_setup, {"fine_tune_steps": -1}, r"parameter fine_tune_steps=-1 must be an integer >= 0"),
    ("06_forecasting.ipynb", forecasting_setup, {"n_paths": 2}, r"parameter n_paths=2 must be an integer >= \d+"),
    ("06_forecasting.ipynb", forecasting_setup, {"pretrain_settings": {"contex": 64}}, r"pretrain_settings: .*'contex'.*the fields: context"),
    ("06_forecasting.ipynb", forecasting_setup, {"pretrain_settings": {"min_context": 1}}, "min_context must be between 2 and context"),
    ("06_forecasting.ipynb", forecasting_setup, {"pretrain_settings": {"horizon": 8}}, r"horizons longer than the forecaster's 8: datasets/AirPassengers \(18\)"),
]


@pytest.mark.parametrize(
    "name,setup,bad,match", SETUPS, ids=[f"{n.split('_')[0]}-{'-'.join(bad)}" for n, _, bad, _ in SETUPS]
)
def test_bad_notebook_parameters_stop_in_the_setup_call(name, setup, bad, match, tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path))
    parameters = {**notebook_defaults(name, setup), **bad}
    with pytest.raises((ValueError, CheckpointError, CorpusError), match=match):
        setup(parameters.pop("profile", "tiny"), **parameters)
    assert not any(tmp_path.iterdir()), "a bad parameter stops before anything is written"


def test_a_comparison_without_a_budget(toy_dataset, tmp_path, monkeypatch):
    """A profile whose comparison has no budget: compare=True is refused, compare=False is not."""
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path))
    monkeypatch.setitem(PROFILE_SETTINGS["02_train"]["tiny"], "compare_steps", None)
    parameters = {**notebook_defaults("02_train.ipynb", training_setup), "dataset": toy_dataset}
    message = r"compare=True needs a budget per run: compare_tokens, compare_steps or compare_minutes \(or compare=False\)"
    with pytest.raises(ValueError, match=message):
        training_setup("tiny", **parameters)
    unset = training_setup("tiny", **{**parameters, "compare": False}).compare_budget
    assert unset == dict.fromkeys(("max_tokens", "max_steps", "max_minutes"))


def test_layer_out_of_the_model():
    assert [resolve_layer(layer, 4) for layer in (None, -1, 1, -4)] == [3, 3, 1, 0]  # None: the last
    for layer in (4, -5):
        with pytest.raises(ValueError, match=rf"parameter layer={layer}: the model has 4 layers \(0 to 3, or negative from the end\)"):
            resolve_layer(layer, 4)
