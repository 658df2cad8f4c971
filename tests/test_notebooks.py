"""The notebooks as users run them: papermill with parameters, and their committed form."""

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import yaml

from moelab.sweep.compare import comparison_spec
from moelab.views.notebook import PROFILE_SETTINGS, notebook_settings, resolve_profile
from moelab.config.presets import PRESETS, preset
from moelab.views.pipeline import STAGES, LocalKernelManager, StageFailed, run_pipeline, training_mode
from moelab.views.setup import training_setup

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_notebook(name: str, output_dir: Path, **parameters) -> nbformat.NotebookNode:
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / name
    papermill.execute_notebook(
        str(ROOT / "notebooks" / name),
        str(output),
        parameters={"profile": "tiny", **parameters},
        cwd=str(ROOT / "notebooks"),
        kernel_name="moelab",
        kernel_manager_class=LocalKernelManager,  # no kernel warning about TCP
        progress_bar=False,
    )
    return nbformat.read(output, as_version=4)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_one_parameters_cell_first_and_only_checked_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code_cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code_cells[0], "one `parameters` cell, the first code cell"
    for line in tagged[0].source.splitlines():
        assert ": " in line.split("=")[0] and "#" in line, f"annotate and explain every parameter: {line!r}"
    assert nb.metadata.kernelspec.name == "moelab"
    # results live in reports/; a notebook keeps only the tiny-profile outputs nbval compares
    # (cells tagged nbval-check-output, refreshed by `make notebook-outputs`)
    checked = [c for c in code_cells if "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked, "mark the cells whose output nbval should compare"
    assert all(c.outputs for c in checked), f"run `make notebook-outputs`: a checked cell of {path.name} has no output"
    unchecked = [c for c in code_cells if c not in checked]
    assert all(not c.outputs for c in unchecked), f"strip the outputs of unchecked cells of {path.name}"
    assert all(c.execution_count is None for c in unchecked) and all(c.execution_count for c in checked)
    assert not any("execution" in c.metadata for c in nb.cells)  # no run timestamps
    assert "widgets" not in nb.metadata


MAX_CELL_LINES = 15


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_fit_on_a_screen(path):
    """Every code cell but the parameters cell (the notebook's interface, one line a parameter) has at most
    15 lines: a notebook's checks and setup are one call to moelab.views.setup, a long demonstration two cells."""
    nb = nbformat.read(path, as_version=4)
    sizes = {i: len(c.source.splitlines()) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    long = {i: n for i, n in sizes.items() if n > MAX_CELL_LINES and "parameters" not in nb.cells[i].metadata.get("tags", [])}
    assert not long, f"{path.name}: code cells longer than {MAX_CELL_LINES} lines (cell index: lines): {long}"


def notebook_defaults(name: str, function=None) -> dict:
    """The defaults of a notebook's parameters cell, as values; only those ``function`` takes, if given."""
    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / name))
    defaults = {key: ast.literal_eval(value["default"]) for key, value in declared.items()}
    if function is None:
        return defaults
    takes = inspect.signature(function).parameters
    return {key: value for key, value in defaults.items() if key in takes and key != "profile"}


def test_training_setup_keeps_what_the_user_passed_and_builds_the_run(toy_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path))
    parameters = {**notebook_defaults("02_train.ipynb", training_setup), "dataset": toy_dataset}
    setup = training_setup("tiny", **{**parameters, "run_name": "X", "learning_rate": 0.002, "overrides": {"n_layers": 1}})
    assert (setup.preset, setup.run_name, setup.dataset) == ("tiny", "X", toy_dataset)
    assert list(setup.settings) == list(PROFILE_SETTINGS["02_train"]["tiny"])  # unpacked in this order by the notebook
    assert setup.settings["max_steps"] == 30 and setup.train_config.max_steps == 30 and setup.train_config.lr == 0.002
    assert setup.model_config.n_layers == 1 and setup.model_config.vocab_size == 256  # the dataset's vocabulary
    assert setup.run_overrides == {"lr": 0.002, "max_steps": 30, "seed": 1337, "n_layers": 1, "vocab_size": 256}
    assert setup.compare_budget == {"max_tokens": None, "max_steps": 10, "max_minutes": None}
    assert setup.compare_label == "10 steps per run"
    assert setup.figures == tmp_path / "X" / "figures" and setup.figures.is_dir()
    assert "given: run_name='X'" in setup.summary() and "bytes tokenizer, 256 tokens" in setup.summary()
    default = training_setup("default", **{**parameters, "preset": "tiny", "compare_minutes": 2.5})
    assert default.compare_label == "1.5 M tokens or 2.5 min per run" and default.run_name == "default"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_lists_every_parameter_with_its_type(path):
    nb = nbformat.read(path, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = [line.split(":")[0] for line in parameters.source.splitlines()]
    done = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True, text=True)
    assert "Unable to parse" not in done.stdout + done.stderr
    for name in names:  # "Optional[int]": papermill does not parse `int | None`, so None-able ones say Optional
        assert re.search(rf"^  {name}: [\w\[\]]+ \(default", done.stdout, re.M), f"papermill does not list {name}"
    # the parameters a profile sets default to None in the cell (None: the profile's value), nothing else does
    declared = papermill.inspect_notebook(str(path))
    for name in PROFILE_SETTINGS.get(path.stem, {}).get("default", {}):
        assert declared[name]["default"] == "None", f"{path.name}: {name} must default to None (the profile's value)"
        assert declared[name]["inferred_type_name"].startswith("Optional["), name
    assert not re.search(r"\((0|-1): the preset", done.stdout), "None, not 0 / -1, means the preset's value"


def test_every_stage_of_the_pipeline_is_a_notebook():
    assert [p.stem for p in NOTEBOOKS] == list(STAGES)
    assert set(PROFILE_SETTINGS) <= set(STAGES)


def test_notebook_settings_fill_only_what_the_user_left_as_none(monkeypatch, tmp_path):
    monkeypatch.delenv("MOELAB_PROFILE", raising=False)
    nones = dict.fromkeys(PROFILE_SETTINGS["02_train"]["default"])
    settings = notebook_settings("02_train", None, **{**nones, "run_name": "X", "max_steps": 7})
    assert settings["run_name"] == "X" and settings["max_steps"] == 7  # passed values are kept as they are
    assert settings["preset"] == "cpu" and settings["dataset"] == preset("cpu").dataset and settings["compare_tokens"] == 1_500_000
    assert settings.from_profile == set(nones) - {"run_name", "max_steps"} and settings.profile == "default"
    assert list(settings) == list(nones)  # in the order passed: `a, b = notebook_settings(...).values()`
    assert "given: run_name='X', max_steps=7" in settings.summary()
    tiny = notebook_settings("02_train", "tiny", **{**nones, "run_name": "X"})
    assert tiny["run_name"] == "X" and tiny["preset"] == "tiny" and tiny["max_steps"] == 30
    assert tiny["dataset"] == "machado-tiny" and tiny["compare_steps"] == 10 and tiny["compare_tokens"] is None
    assert notebook_settings("02_train", "tiny", **nones)["run_name"] == "tiny"
    # a profile value may follow another setting: the tiny profile compares with the run's fixed-window run,
    # the first seed's run of notebook 02's comparison sweep (read from its spec.yaml)
    nones03 = dict.fromkeys(PROFILE_SETTINGS["03_expert_utilization"]["tiny"])
    assert notebook_settings("03_expert_utilization", "tiny", **{**nones03, "run_name": "X"})["compare_run_name"] is None
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path))
    spec = comparison_spec("X", "tiny", "toy", {"seed": 9}, preset("tiny").model, {"max_steps": 5}, [5, 6])
    (tmp_path / "sweeps" / "X-compare").mkdir(parents=True)
    (tmp_path / "sweeps" / "X-compare" / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert notebook_settings("03_expert_utilization", "tiny", **{**nones03, "run_name": "X"})["compare_run_name"] == "X-compare-fixed-s5"
    assert notebook_settings("03_expert_utilization", "tiny", **{**nones03, "compare_run_name": ""})["compare_run_name"] == ""
    assert notebook_settings("03_expert_utilization", "default", **nones03)["compare_run_name"] is None
    # notebook 03's dataset is the run's own (a BPE run's BPE dataset); notebook 01 names a BPE dataset apart
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "config.json").write_text(json.dumps({"dataset": "machado-bpe512"}))
    assert notebook_settings("03_expert_utilization", "default", **{**nones03, "run_name": "B"})["dataset"] == "machado-bpe512"
    assert notebook_settings("03_expert_utilization", "tiny", **{**nones03, "run_name": "new"})["dataset"] == "machado-tiny"
    nones01 = dict.fromkeys(PROFILE_SETTINGS["01_data_prep"]["tiny"])
    bpe = {**nones01, "tokenizer": "bpe", "vocab_size": 512}
    assert notebook_settings("01_data_prep", "tiny", **bpe)["dataset"] == "machado-tiny-bpe512"
    assert notebook_settings("01_data_prep", "tiny", **nones01)["dataset"] == "machado-tiny"  # bytes
    # the default profile prepares what notebook 02's default run trains on: the cpu preset's dataset
    prepared = notebook_settings("01_data_prep", "default", **nones01)
    assert prepared["dataset"] == notebook_settings("02_train", "default", **nones)["dataset"] == preset("cpu").dataset
    monkeypatch.setitem(PRESETS["cpu"], "dataset", "machado-bpe2048")
    prepared = notebook_settings("01_data_prep", "default", **nones01)
    assert (prepared["tokenizer"], prepared["vocab_size"], prepared["dataset"]) == ("bpe", 2048, "machado-bpe2048")
    assert notebook_settings("01_data_prep", "default", **{**nones01, "vocab_size": 512})["dataset"] == "machado-bpe512"
    assert notebook_settings("01_data_prep", "default", **{**nones01, "tokenizer": "bytes"})["dataset"] == "machado"
    assert notebook_settings("01_data_prep", "default", **{**nones01, "tokenizer": "bytes"})["vocab_size"] is None
    assert notebook_settings("01_data_prep", "tiny", **{**bpe, "dataset": "mine"})["dataset"] == "mine"
    # your own text is named after its source: it never replaces the Machado dataset
    own, mine = {"source": "/home/me/mytexts/"}, {**nones01, "tokenizer": "bytes"}
    assert notebook_settings("01_data_prep", "default", **mine, context=own)["dataset"] == "mytexts"
    assert notebook_settings("01_data_prep", "tiny", **mine, context=own)["dataset"] == "mytexts-tiny"
    assert notebook_settings("01_data_prep", "default", **bpe, context={"source": "letters.csv"})["dataset"] == "letters-bpe512"


def test_notebook_settings_refuse_unknown_and_missing_names_and_profiles(monkeypatch):
    nones = dict.fromkeys(PROFILE_SETTINGS["04_sampling"]["default"])
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) max_step\b.*set exactly: run_name, max_new_tokens"):
        notebook_settings("04_sampling", "default", **nones, max_step=3)
    with pytest.raises(TypeError, match=r"missing parameter\(s\) max_new_tokens"):
        notebook_settings("04_sampling", "default", run_name="X")
    with pytest.raises(ValueError, match="unknown notebook '05_x'"):
        notebook_settings("05_x", "default")
    with pytest.raises(ValueError, match="parameter profile='huge' is not one of 'default', 'tiny'"):
        notebook_settings("04_sampling", "huge", **nones)
    monkeypatch.setenv("MOELAB_PROFILE", "tiny")
    assert resolve_profile(None) == "tiny" and resolve_profile("default") == "default"  # a passed profile wins
    monkeypatch.setenv("MOELAB_PROFILE", "huge")
    with pytest.raises(ValueError, match=r"\$MOELAB_PROFILE='huge'"):
        resolve_profile(None)
    monkeypatch.delenv("MOELAB_PROFILE")
    assert resolve_profile(None) == "default"


def test_the_training_stage_resumes_only_when_its_inputs_are_unchanged():
    assert training_mode({}, "f1", force=False) == ("overwrite", "not run yet")
    assert training_mode({"fingerprint": "f1", "started": "t"}, "f1", force=False)[0] == "resume"
    mode, why = training_mode({"fingerprint": "f0", "started": "t"}, "f1", force=False)
    assert mode == "overwrite" and "inputs changed" in why
    assert training_mode({"fingerprint": "f1", "started": "t"}, "f1", force=True) == (
        "overwrite", "forced: training from scratch"
    )


def test_data_prep_notebook_rejects_bad_parameters(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="val_fraction"):
        run_notebook("01_data_prep.ipynb", tmp_path, val_fraction=0.9)


def _needs_mirror():
    if not os.environ.get("MOELAB_CORPUS_MIRROR"):
        pytest.skip("needs MOELAB_CORPUS_MIRROR (the shared Machado mirror) to run offline")


def test_a_bpe_dataset_through_notebooks_01_to_03_with_a_run_name_used_as_given(tmp_path, monkeypatch):
    """`papermill 01_data_prep.ipynb -p tokenizer bpe -p vocab_size 300`, then 02 on that dataset as the run X
    (`-p profile tiny -p run_name X` trains X, never X-tiny), then 03 on X."""
    _needs_mirror()
    data, reports = tmp_path / "data", tmp_path / "reports"
    monkeypatch.setenv("MOELAB_DATA_DIR", str(data))
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(reports))
    with pytest.raises(papermill.PapermillExecutionError, match=r"vocab_size.*>= 257"):
        run_notebook("01_data_prep.ipynb", tmp_path / "out", tokenizer="bpe", vocab_size=100)
    nb01 = run_notebook("01_data_prep.ipynb", tmp_path / "out", tokenizer="bpe", vocab_size=300)
    assert sorted(p.name for p in (data / "processed").iterdir()) == ["machado-tiny-bpe300"]  # its own name
    meta = json.loads((data / "processed" / "machado-tiny-bpe300" / "meta.json").read_text())
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16"
    assert "│" in _text(nb01)  # a sentence cut into its tokens
    nb = run_notebook("02_train.ipynb", tmp_path / "out", run_name="X", dataset="machado-tiny-bpe300", compare=False)
    assert sorted(p.name for p in (data / "checkpoints").iterdir()) == ["X"]
    assert (data / "checkpoints" / "X" / "ckpt_0000030.pt").is_file()  # the tiny profile's 30 steps
    assert sorted(p.name for p in reports.iterdir()) == ["X"] and (reports / "X" / "metrics.parquet").is_file()
    config = json.loads((reports / "X" / "config.json").read_text())
    assert config["model"]["vocab_size"] == 300 and config["dataset"] == "machado-tiny-bpe300"  # from the dataset
    text = _text(nb)
    assert "given: run_name='X'" in text and "preset='tiny'" in text and "comparison skipped" in text
    assert "bpe tokenizer, 300 tokens" in text and "bits per byte" in text
    nb03 = run_notebook("03_expert_utilization.ipynb", tmp_path / "out", run_name="X", compare_run_name="")
    assert "machado-tiny-bpe300" in _text(nb03)  # the run's own dataset
    assert pd.read_parquet(reports / "X" / "expert_load.parquet").shape == (2, 4)
    assert len(pd.read_parquet(reports / "X" / "specialization_tokens.parquet")) >= 3
    assert "each token in layer" in (reports / "X" / "routing_passage.html").read_text()


def _text(nb: nbformat.NotebookNode) -> str:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def test_pipeline_of_notebooks_in_the_tiny_profile(tmp_path, monkeypatch, capfd):
    """00 → 01 → 02 → 03 → 04 through moelab.views.pipeline (what `make run` calls), each checked by what it leaves on disk;
    then a re-run that skips what is up to date, an interrupted training that resumes, a changed parameter,
    and a failing stage."""
    _needs_mirror()
    data, reports = tmp_path / "data", tmp_path / "reports"
    monkeypatch.setenv("MOELAB_DATA_DIR", str(data))
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(reports))
    run = reports / "nb"  # the executed notebooks go beside the run's results, under the run's own name
    log = []
    params = {"prompts": ["Capitu", ""], "seeds": [3]}
    results = run_pipeline("nb", params, profile="tiny", log=log.append)
    assert [r.status for r in results] == ["ran"] * len(STAGES)
    streamed = capfd.readouterr()
    assert "without encryption" not in streamed.out + streamed.err  # the kernel's TCP warning: no TCP at all
    assert "16 works" in streamed.out  # the cells' output streams to the terminal while they run
    assert not list((ROOT / "notebooks").glob("kernel-*")), "IPC sockets belong in a temporary folder"
    nb = nbformat.read(run / "01_data_prep.ipynb", as_version=4)
    processed = data / "processed" / "machado-tiny"
    meta = json.loads((processed / "meta.json").read_text())
    catalog = pd.read_parquet(processed / "catalog.parquet")
    assert len(catalog) == 16 and catalog["category"].nunique() == 8  # two works per category
    for split in ("train", "val", "test"):
        assert (processed / f"{split}.bin").stat().st_size == meta["splits"][split]["bytes"] > 0
    assert set(meta["source"]["missing_works"]) == {
        "txt/conto/historiasSemData.txt", "txt/crônica/bonsDias.txt", "txt/romance/esau.txt"
    }
    assert "16 works" in "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    metrics = pd.read_parquet(run / "metrics.parquet")
    assert metrics["step"].max() == 30 and metrics["val_bpb"].notna().sum() == 3
    assert sorted(metrics["window"].unique()) == [8, 12, 16]  # the tiny schedule, really used
    assert (data / "checkpoints" / "nb" / "ckpt_0000030.pt").is_file()
    comparison = pd.read_csv(run / "comparison.csv", index_col=0)  # notebook 02's comparison: a one-seed sweep
    assert list(comparison.index) == ["schedule", "fixed", "dense"] and (comparison["n"] == 1).all()
    compared = pd.read_csv(reports / "sweeps" / "nb-compare" / "results.csv")
    assert compared["run"].tolist() == [f"nb-compare-{v}-s1337" for v in ("schedule", "fixed", "dense")]
    assert (compared["steps"] == 10).all()
    with pytest.raises(papermill.PapermillExecutionError, match="already has checkpoints"):
        run_notebook("02_train.ipynb", tmp_path, run_name="nb")  # an existing run is never silently replaced

    load = pd.read_parquet(run / "expert_load.parquet")
    assert load.shape == (2, 4) and load.sum(axis=1).round(6).eq(1).all()
    balance = pd.read_parquet(run / "balance_comparison.parquet")  # against the fixed-window run of 02
    assert set(balance.index.get_level_values("run")) == {"nb", "nb-compare-fixed-s1337"}
    genre = pd.read_parquet(run / "specialization_genre.parquet")
    assert len(genre) == 8
    assert "expert 0" in (run / "routing_passage.html").read_text()
    assert {p.name for p in (run / "figures").iterdir()} == {
        "training_curves.png", "balance_training.png", "comparison.png", "comparison_curves.png", "expert_load.png",
        "load_over_time.png", "balance.png", "coactivation.png", "specialization_tokens.png", "specialization_genre.png",
        "expert_load_compare.png", "forecast_synthetic.png", "forecast_pretraining.png", "forecast_benchmark.png",
        "forecast_examples.png",
    }
    forecast = pd.read_csv(run / "forecast_benchmark.csv", index_col=0)  # notebook 06: every method on the tiny benchmark
    assert forecast.index.tolist() == ["moelab", "moelab fine-tuned", "seasonal naive", "ETS", "AutoETS", "AutoTheta"]
    assert (forecast["series"] == 2).all() and forecast.loc["seasonal naive", "relative MASE"] == pytest.approx(1.0)
    assert (data / "forecast" / "pretrained-tiny.pt").is_file()  # pretrained there, loaded on the next run

    samples = (run / "samples.md").read_text()
    assert samples.count("**Sample 1**") == 2 and "## Prompt: “Capitu”" in samples
    assert "empty prompt: starting from a newline" in samples and "seed=3" in samples

    # notebook 05: the tiny study, a 2 x 2 sweep, with its tables, figures and conclusions
    sweep = reports / "sweeps" / "tiny"
    sweep_runs = [f"tiny-{v}-s{s}" for s in (1, 2) for v in ("schedule", "fixed")]
    assert pd.read_csv(sweep / "results.csv")["run"].tolist() == sweep_runs
    summary05 = pd.read_csv(sweep / "summary.csv")
    assert summary05["variant"].tolist() == ["schedule", "fixed"] and summary05["n"].tolist() == [2, 2]
    assert {p.name for p in (sweep / "figures").iterdir()} == {"summary.png", "curves.png"}
    nb05 = nbformat.read(run / "05_experiments.ipynb", as_version=4)
    shown = "".join(o.get("data", {}).get("text/markdown", "") for c in nb05.cells if c.cell_type == "code" for o in c.outputs)
    assert "Reference: 'schedule'" in shown and "paired seeds" in shown

    # the report the pipeline ends with: the notebooks as HTML, and an index that links them and the figures
    page = (run / "index.html").read_text()
    for name in STAGES:
        assert (run / f"{name}.html").is_file() and f'href="{name}.html"' in page
    assert "figures/expert_load.png" in page and "bits per byte" in page
    assert "Pipeline (make run): 00_moe_by_hand" in page  # stage times from pipeline.json
    assert "Made with moelab" in page and "preset `tiny`" in page  # the stamp: commit, preset, machine
    split = json.loads((run / "val_split.json").read_text())  # notebook 02 scored the whole validation split
    assert split["bytes"] == meta["splits"]["val"]["bytes"] and f"{split['bits_per_byte']:.4f} bits per byte" in page
    assert "one seed: no interval, no verdict" in page  # the one-seed comparison gives values, no verdict
    assert "# moelab run `nb`" in (run / "README.md").read_text()

    # unchanged inputs: every stage is skipped
    assert [r.status for r in run_pipeline("nb", params, profile="tiny", log=log.append)] == ["skipped"] * len(STAGES)
    assert "01_data_prep: up to date, skipped" in "\n".join(log)

    # an interrupted training (started, never finished, the last checkpoint at step 20) resumes with the same inputs
    state = json.loads((run / "pipeline.json").read_text())
    state["02_train"] = {"fingerprint": state["02_train"]["fingerprint"], "started": "2000-01-01 00:00:00"}
    (run / "pipeline.json").write_text(json.dumps(state))
    (data / "checkpoints" / "nb" / "ckpt_0000030.pt").unlink()
    before = pd.read_parquet(run / "metrics.parquet")
    log.clear()
    statuses = [r.status for r in run_pipeline("nb", params, profile="tiny", log=log.append)]
    assert statuses == ["skipped", "skipped", "ran"] + ["skipped"] * (len(STAGES) - 3)
    assert "02_train: running (same inputs as the unfinished last start: resuming the training" in "\n".join(log)
    after = pd.read_parquet(run / "metrics.parquet")
    assert after["step"].max() == 30 and (data / "checkpoints" / "nb" / "ckpt_0000030.pt").is_file()
    done_before = before[before["step"] <= 20].reset_index(drop=True)
    pd.testing.assert_frame_equal(after[after["step"] <= 20].reset_index(drop=True), done_before)  # not retrained
    assert after.loc[after["step"] == 30, "val_bpb"].item() == pytest.approx(
        before.loc[before["step"] == 30, "val_bpb"].item(), abs=1e-6
    )  # the resumed steps 21..30 are the interrupted ones again
    assert "finished" in json.loads((run / "pipeline.json").read_text())["02_train"]

    # a parameter only notebook 04 takes re-runs 04 and what follows it; 05's sweep keeps its finished runs
    log.clear()
    statuses = [r.status for r in run_pipeline("nb", {"prompts": ["Capitu"], "seeds": [3]}, profile="tiny", log=log.append)]
    assert statuses == ["skipped"] * 4 + ["ran"] * (len(STAGES) - 4)
    assert pd.read_csv(reports / "sweeps" / "tiny" / "results.csv")["run"].tolist() == sweep_runs
    assert "“Capitu”" in (run / "samples.md").read_text() and "empty prompt" not in (run / "samples.md").read_text()
    with pytest.raises(ValueError, match="unknown notebook parameter.*sedes.*04_sampling: .*seeds"):
        run_pipeline("nb", {"sedes": [3]}, profile="tiny")
    # a failing stage names its notebook and cell and leaves the earlier stages alone
    before = (run / "01_data_prep.ipynb").stat().st_mtime_ns
    with pytest.raises(StageFailed, match=r"(?s)02_train failed at cell \[\d+\].*if_exists='maybe'.*02_train\.ipynb"):
        run_pipeline("nb", {"if_exists": "maybe"}, profile="tiny")
    assert (run / "01_data_prep.ipynb").stat().st_mtime_ns == before
    assert "finished" not in json.loads((run / "pipeline.json").read_text())["02_train"]
    # changed inputs train from scratch, and the log says so
    log.clear()
    run_pipeline("nb", {"seed": 7}, profile="tiny", log=log.append)
    assert "02_train: running (inputs changed: training from scratch)" in "\n".join(log)
    retrained = pd.read_parquet(run / "metrics.parquet")
    assert retrained["step"].max() == 30 and not retrained["loss"].head(3).equals(after["loss"].head(3))
