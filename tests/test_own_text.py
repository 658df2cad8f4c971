"""Your own text, end to end, as the README tells it: a folder of .txt files through the notebook
pipeline (`make run RUN=mine PARAMS=mine.yaml STAGES="01 02 03 04"`) and through the `moelab`
command (`moelab prepare`, `moelab train`, `moelab evaluate`)."""

import pandas as pd
import pytest
import yaml

from moelab.__main__ import main
from moelab.data import load_dataset
from moelab.runs.files import latest_checkpoint
from moelab.views.pipeline import STAGES, main as pipeline_main, run_pipeline, select_stages

from .conftest import write_toy_corpus


@pytest.fixture
def own_text(tmp_path, monkeypatch):
    """A fresh data and reports folder, and a folder of .txt files in three sub-folders (categories)."""
    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path / "reports"))
    folder = tmp_path / "mytexts"
    folder.mkdir()
    write_toy_corpus(folder)
    return folder


def test_your_own_text_through_the_notebooks_report_and_sampling(own_text, tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text(yaml.safe_dump({"source": str(own_text), "dataset": "mytexts", "prompts": ["Era uma vez"]}))
    assert pipeline_main(["mine", "-f", str(params), "--profile", "tiny", "--stages", "01 02 03 04"]) == 0
    reports, data = tmp_path / "reports", tmp_path / "data"
    assert sorted(p.name for p in (data / "processed").iterdir()) == ["mytexts"]  # no Machado dataset touched
    catalog = load_dataset("mytexts").catalog
    assert set(catalog["category"]) == {"romance", "conto", "teatro"} and len(catalog) == 6  # tiny: 2 works each
    run = reports / "mine"
    assert pd.read_parquet(run / "metrics.parquet")["step"].max() == 30
    assert (run / "config.json").read_text().count('"dataset": "mytexts"') == 1
    assert (run / "expert_load.parquet").is_file() and (run / "figures" / "balance.png").is_file()
    samples = (run / "samples.md").read_text()
    assert "## Prompt: “Era uma vez”" in samples and "**Sample 1**" in samples
    page = (run / "index.html").read_text()
    assert all(f'href="{stage}.html"' in page for stage in STAGES[1:5])
    assert "05_experiments.html" not in page and not (reports / "sweeps" / "tiny").exists()  # stages not selected


def test_your_own_text_through_the_moelab_command(own_text, tmp_path, capsys):
    assert main(["prepare", str(own_text), "--no-progress"]) == 0
    assert "dataset 'mytexts'" in capsys.readouterr().out
    assert main(["train", "--preset", "tiny", "--dataset", "mytexts", "--run-name", "mine", "--no-progress",
                 "--set", "max_steps=6"]) == 0  # fmt: skip
    checkpoint = latest_checkpoint("mine")
    assert checkpoint is not None and checkpoint.name == "ckpt_0000006.pt"
    text = tmp_path / "letter.txt"
    text.write_text("Era uma vez uma carta que ninguém leu.\n" * 5, encoding="utf-8")
    assert main(["evaluate", "--checkpoint", str(checkpoint), str(text)]) == 0
    assert "bits per byte" in capsys.readouterr().out


def test_stages_are_chosen_by_number_or_name_and_an_unknown_one_is_refused():
    assert select_stages(["02", "01_data_prep"]) == ("01_data_prep", "02_train")
    assert select_stages(None) == STAGES
    with pytest.raises(ValueError, match="unknown stage.*07.*00 to 06"):
        select_stages(["07"])
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline("x", {}, profile="tiny", stages=["train"])
