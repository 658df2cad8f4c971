"""The notebooks as users run them: papermill with parameters, and their committed form."""

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

from moelab.pipeline import StageFailed, run_pipeline

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_lists_every_parameter_with_its_type(path):
    nb = nbformat.read(path, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = [line.split(":")[0] for line in parameters.source.splitlines()]
    done = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True, text=True)
    assert "Unable to parse" not in done.stdout + done.stderr
    for name in names:
        assert re.search(rf"^  {name}: \w+ \(default", done.stdout, re.M), f"papermill does not list {name}"


def test_data_prep_notebook_rejects_bad_parameters(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="val_fraction"):
        run_notebook("01_data_prep.ipynb", tmp_path, val_fraction=0.9)


def test_pipeline_of_notebooks_in_the_tiny_profile(tmp_path, monkeypatch):
    """01 → 02 → 03 → 04 through moelab.pipeline (what `make run` calls), each checked by what it leaves on disk;
    then a re-run that skips what is up to date, a changed parameter, and a failing stage."""
    if not os.environ.get("MOELAB_CORPUS_MIRROR"):
        pytest.skip("needs MOELAB_CORPUS_MIRROR (the shared Machado mirror) to run offline")
    data, reports = tmp_path / "data", tmp_path / "reports"
    monkeypatch.setenv("MOELAB_DATA_DIR", str(data))
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(reports))
    run = reports / "nb-tiny"  # the executed notebooks go beside the run's results
    log = []
    results = run_pipeline("nb", {"prompts": ["Capitu", ""], "seeds": [3]}, log=log.append)
    assert [r.status for r in results] == ["ran"] * 4
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
    assert (data / "checkpoints" / "nb-tiny" / "ckpt_0000030.pt").is_file()
    comparison = pd.read_csv(run / "comparison.csv", index_col=0)
    assert list(comparison.index) == ["MoE, window schedule", "MoE, fixed window", "dense, same active parameters"]
    assert (comparison["steps"] == 10).all()
    with pytest.raises(papermill.PapermillExecutionError, match="already has checkpoints"):
        run_notebook("02_train.ipynb", tmp_path, run_name="nb")  # an existing run is never silently replaced

    load = pd.read_parquet(run / "expert_load.parquet")
    assert load.shape == (2, 4) and load.sum(axis=1).round(6).eq(1).all()
    balance = pd.read_parquet(run / "balance_comparison.parquet")  # against the fixed-window run of 02
    assert set(balance.index.get_level_values("run")) == {"nb-tiny", "nb-tiny-cmp-2"}
    genre = pd.read_parquet(run / "specialization_genre.parquet")
    assert len(genre) == 8
    assert "expert 0" in (run / "routing_passage.html").read_text()
    assert {p.name for p in (run / "figures").iterdir()} == {
        "training_curves.png", "comparison.png", "expert_load.png", "load_over_time.png", "balance.png",
        "coactivation.png", "specialization_bytes.png", "specialization_genre.png", "expert_load_compare.png",
    }

    samples = (run / "samples.md").read_text()
    assert samples.count("**Sample 1**") == 2 and "## Prompt: “Capitu”" in samples
    assert "empty prompt: starting from a newline" in samples and "seed=3" in samples

    # the report the pipeline ends with: the notebooks as HTML, and an index that links them and the figures
    page = (run / "index.html").read_text()
    for name in ("01_data_prep", "02_train", "03_expert_utilization", "04_sampling"):
        assert (run / f"{name}.html").is_file() and f'href="{name}.html"' in page
    assert "figures/expert_load.png" in page and "bits per byte" in page
    assert "Pipeline (make run): 01_data_prep" in page  # stage times from pipeline.json
    assert "# moelab run `nb-tiny`" in (run / "README.md").read_text()

    # unchanged inputs: every stage is skipped; a parameter only notebook 04 takes re-runs only 04
    assert [r.status for r in run_pipeline("nb", {"prompts": ["Capitu", ""], "seeds": [3]}, log=log.append)] == [
        "skipped"
    ] * 4
    assert "01_data_prep: up to date, skipped" in "\n".join(log)
    statuses = [r.status for r in run_pipeline("nb", {"prompts": ["Capitu"], "seeds": [3]}, log=log.append)]
    assert statuses == ["skipped", "skipped", "skipped", "ran"]
    assert "“Capitu”" in (run / "samples.md").read_text() and "empty prompt" not in (run / "samples.md").read_text()
    with pytest.raises(ValueError, match="unknown notebook parameter.*sedes.*04_sampling: .*seeds"):
        run_pipeline("nb", {"sedes": [3]})
    # a failing stage names its notebook and cell and leaves the earlier stages alone
    before = (run / "01_data_prep.ipynb").stat().st_mtime_ns
    with pytest.raises(StageFailed, match=r"(?s)02_train failed at cell \[\d+\].*if_exists='maybe'.*02_train\.ipynb"):
        run_pipeline("nb", {"if_exists": "maybe"})
    assert (run / "01_data_prep.ipynb").stat().st_mtime_ns == before
    assert "02_train" not in json.loads((run / "pipeline.json").read_text())
