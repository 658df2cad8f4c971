"""The committed reference report (reports/reference/) cannot go stale silently: it must be what
`make run` trains today. A preset change that alters the default run fails here, naming the
fields, until the reference is made again (`make run`, then copy reports/default/ and the
sweeps it ran to reports/reference/)."""

import json

import pytest

from moelab.config.model import ModelConfig
from moelab.config.presets import build_configs
from moelab.config.train import TrainConfig, config_diff
from moelab.paths import project_root
from moelab.sweep.compare import comparison_spec
from moelab.sweep.spec import load_spec
from moelab.views.notebook import PROFILE_SETTINGS, notebook_settings

REFERENCE = project_root() / "reports" / "reference"
# notebook 02's default profile with every value resolved (its dataset follows the preset)
DEFAULT_RUN = notebook_settings("02_train", "default", **dict.fromkeys(PROFILE_SETTINGS["02_train"]["default"]))
REMAKE = "make the reference again: `make run`, then copy reports/default/ and its sweeps to reports/reference/"


def _differences(recorded_model: dict, recorded_train: dict, model: ModelConfig, train: TrainConfig) -> str:
    diff = {**config_diff(ModelConfig.from_dict(recorded_model), model), **config_diff(TrainConfig.from_dict(recorded_train), train)}
    return ", ".join(f"{name}: reference {old!r}, today {new!r}" for name, (old, new) in diff.items())


def test_the_reference_run_trained_what_the_default_run_trains_today():
    recorded = json.loads((REFERENCE / "config.json").read_text())
    model, train = build_configs(DEFAULT_RUN["preset"], {"seed": 1337})  # notebook 02's defaults
    differences = _differences(recorded["model"], recorded["train"], model, train)
    assert not differences, f"reports/reference/ differs from today's default run ({differences}); {REMAKE}"
    assert recorded["dataset"] == DEFAULT_RUN["dataset"] and recorded["run_name"] == DEFAULT_RUN["run_name"]


def test_the_reference_comparison_trained_what_notebook_02_compares_today():
    recorded = load_spec(REFERENCE / "sweeps" / "default-compare" / "spec.yaml", check_dataset=False)
    model, train = build_configs(DEFAULT_RUN["preset"], {"seed": 1337})
    budget = {"max_tokens": DEFAULT_RUN["compare_tokens"], "max_steps": None, "max_minutes": None}
    today = load_spec(comparison_spec("default", DEFAULT_RUN["preset"], DEFAULT_RUN["dataset"], {"seed": 1337}, model,
                                      budget, [1337]), check_dataset=False)  # fmt: skip
    assert list(recorded.variants) == list(today.variants) and recorded.seeds == today.seeds
    for variant in today.variants:
        assert recorded.configs(variant, 1337) == today.configs(variant, 1337), f"comparison variant {variant!r}; {REMAKE}"


def test_the_reference_study_trained_what_notebook_05_runs_today():
    study = PROFILE_SETTINGS["05_experiments"]["default"]["study"]
    recorded = load_spec(REFERENCE / "sweeps" / study / "spec.yaml", check_dataset=False)
    today = load_spec(study, check_dataset=False)
    assert list(recorded.variants) == list(today.variants) and recorded.seeds == today.seeds
    for variant in today.variants:
        assert recorded.configs(variant, 1) == today.configs(variant, 1), f"study variant {variant!r}; {REMAKE}"


@pytest.mark.parametrize("stage", ["00_moe_by_hand", "01_data_prep", "02_train", "03_expert_utilization",
                                   "04_sampling", "05_experiments", "06_forecasting"])  # fmt: skip
def test_the_reference_holds_every_stage_of_make_run(stage):
    stages = json.loads((REFERENCE / "pipeline.json").read_text())
    assert "seconds" in stages.get(stage, {}), f"reports/reference/ lacks stage {stage}; {REMAKE}"
    assert (REFERENCE / f"{stage}.html").is_file()
