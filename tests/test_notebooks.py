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

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_notebook(name: str, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    output = tmp_path / name
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
def test_committed_notebooks_have_one_parameters_cell_first_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code_cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code_cells[0], "one `parameters` cell, the first code cell"
    for line in tagged[0].source.splitlines():
        assert ": " in line.split("=")[0] and "#" in line, f"annotate and explain every parameter: {line!r}"
    assert nb.metadata.kernelspec.name == "moelab"
    # committed stripped: results live in reports/, not in the notebooks' diffs
    assert all(not c.outputs and c.execution_count is None for c in code_cells), f"strip outputs of {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_lists_every_parameter_with_its_type(path):
    nb = nbformat.read(path, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = [line.split(":")[0] for line in parameters.source.splitlines()]
    done = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True, text=True)
    assert "Unable to parse" not in done.stdout + done.stderr
    for name in names:
        assert re.search(rf"^  {name}: \w+ \(default", done.stdout, re.M), f"papermill does not list {name}"


def test_data_prep_notebook_writes_the_processed_dataset(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    monkeypatch.setenv("MOELAB_DATA_DIR", str(data_dir))
    if not os.environ.get("MOELAB_CORPUS_MIRROR"):
        pytest.skip("needs MOELAB_CORPUS_MIRROR (the shared Machado mirror) to run offline")
    nb = run_notebook("01_data_prep.ipynb", tmp_path, dataset="nbtest")
    folder = data_dir / "processed" / "nbtest-tiny"
    meta = json.loads((folder / "meta.json").read_text())
    catalog = pd.read_parquet(folder / "catalog.parquet")
    assert len(catalog) == 16 and catalog["category"].nunique() == 8  # two works per category
    for split in ("train", "val", "test"):
        assert (folder / f"{split}.bin").stat().st_size == meta["splits"][split]["bytes"] > 0
    assert set(meta["source"]["missing_works"]) == {
        "txt/conto/historiasSemData.txt", "txt/crônica/bonsDias.txt", "txt/romance/esau.txt"
    }
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "16 works" in outputs


def test_data_prep_notebook_rejects_bad_parameters(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="val_fraction"):
        run_notebook("01_data_prep.ipynb", tmp_path, val_fraction=0.9)


def test_training_notebook_trains_compares_and_saves(tmp_path, monkeypatch):
    if not os.environ.get("MOELAB_CORPUS_MIRROR"):
        pytest.skip("needs MOELAB_CORPUS_MIRROR (the shared Machado mirror) to run offline")
    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path / "reports"))
    run_notebook("01_data_prep.ipynb", tmp_path)
    run_notebook("02_train.ipynb", tmp_path, run_name="nb")
    reports = tmp_path / "reports" / "nb-tiny"
    metrics = pd.read_parquet(reports / "metrics.parquet")
    assert metrics["step"].max() == 30 and metrics["val_bpb"].notna().sum() == 3
    assert sorted(metrics["window"].unique()) == [8, 12, 16]  # the tiny schedule, really used
    assert (tmp_path / "data" / "checkpoints" / "nb-tiny" / "ckpt_0000030.pt").is_file()
    comparison = pd.read_csv(reports / "comparison.csv", index_col=0)
    assert list(comparison.index) == ["MoE, window schedule", "MoE, fixed window", "dense, same active parameters"]
    assert (comparison["steps"] == 10).all()
    assert {p.name for p in (reports / "figures").iterdir()} == {"training_curves.png", "comparison.png"}
    # running it again without saying what to do with the existing run stops with a clear message
    with pytest.raises(papermill.PapermillExecutionError, match="already has checkpoints"):
        run_notebook("02_train.ipynb", tmp_path, run_name="nb")
