"""What the notebooks share: profiles, and parameter checks.

A notebook's ``parameters`` cell holds literal defaults (papermill injects its values
after it). A parameter whose value depends on the *profile* defaults to ``None``; the
next cell hands those parameters to :func:`notebook_settings`, which fills every one
left as ``None`` with the profile's value and never changes one the user passed::

    run_name, max_steps = notebook_settings("02_train", profile, run_name=run_name, max_steps=max_steps).values()

Two profiles: ``default`` (what ``make run`` and a user in JupyterLab get) and
``tiny`` (seconds-long settings: the tiny preset, step budgets, the two smallest works
per category as the dataset ``machado-tiny``, runs named ``tiny``). ``profile=None``
means ``$MOELAB_PROFILE`` if set, else ``default``: nbval, which cannot pass
parameters, runs the notebooks in the tiny profile through that variable.
"""

from __future__ import annotations

import os
from typing import Any

from moelab.forecast.pretrain import FINE_TUNE_STEPS

PROFILES = ("default", "tiny")
PROFILE_ENV = "MOELAB_PROFILE"


def _compare_run_of(settings: dict[str, Any]) -> str | None:
    """Notebook 02's fixed-window comparison run of the chosen run (None when it has no comparison)."""
    from moelab.sweep.compare import comparison_run

    try:
        return comparison_run(settings["run_name"], "fixed")
    except FileNotFoundError:
        return None


def _named_after_source(suffix: str = ""):
    """Notebook 01's dataset: named after its ``source`` ("machado", or the folder's or file's name) plus
    ``suffix``, and ``-bpe<vocab_size>`` for BPE, so preparing other text never replaces the Machado dataset."""

    def resolve(settings: dict[str, Any]) -> str:
        from pathlib import Path

        from moelab.data import tokenized_name

        source = str(settings.get("source", "machado"))
        name = "machado" if source == "machado" else Path(source).stem
        return tokenized_name(name + suffix, settings.get("tokenizer", "bytes"), settings.get("vocab_size"))

    return resolve


def _preset_tokenizer(settings: dict[str, Any]) -> str:
    """Notebook 01's tokenizer: the default (cpu) preset's dataset's, so notebook 02's default run finds it."""
    from moelab.config.presets import preset
    from moelab.data import parse_dataset_name

    return parse_dataset_name(preset("cpu").dataset)[1]


def _preset_bpe_vocab(settings: dict[str, Any]) -> int | None:
    """Notebook 01's BPE vocabulary: the cpu preset's when both are BPE; bytes have none to choose."""
    from moelab.config.presets import preset
    from moelab.data import parse_dataset_name

    _, tokenizer, vocab_size = parse_dataset_name(preset("cpu").dataset)
    return vocab_size if settings["tokenizer"] == tokenizer == "bpe" else None


def _dataset_of_preset(settings: dict[str, Any]) -> str:
    """Notebook 02's dataset: the chosen preset's (the tokenizer is part of its recipe)."""
    from moelab.config.presets import preset

    return preset(settings["preset"]).dataset


def _dataset_of_run(fallback: str):
    """The dataset the chosen run was trained on (its config.json), else ``fallback``: a BPE run gets its BPE dataset."""

    def resolve(settings: dict[str, Any]) -> str:
        import json

        from moelab.runs.files import run_reports_dir

        path = run_reports_dir(settings["run_name"]) / "config.json"
        if not path.is_file():
            return fallback
        return json.loads(path.read_text()).get("dataset") or fallback

    return resolve


def _pretrained_path(name: str):
    """The pretrained forecaster's path: ``moelab forecast pretrain``'s default, or a file of another ``name`` beside it."""

    def resolve(settings: dict[str, Any]) -> str:
        from moelab.forecast.pretrain import default_path

        return str(default_path().with_name(name))

    return resolve


def _all_benchmark_series(settings: dict[str, Any]) -> list[str]:
    from moelab.forecast.corpus import BENCHMARK

    return list(BENCHMARK)


# The values each profile gives the parameters a notebook leaves as None. A None here
# keeps its meaning in the notebook ("the preset's value", "none"); a callable is
# computed from the other settings (so it follows a run name the user passed).
PROFILE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "01_data_prep": {
        "default": {"tokenizer": _preset_tokenizer, "vocab_size": _preset_bpe_vocab, "dataset": _named_after_source(),
                    "max_works_per_category": None},
        "tiny": {"tokenizer": "bytes", "vocab_size": None, "dataset": _named_after_source("-tiny"),
                 "max_works_per_category": 2},
    },
    "02_train": {
        "default": {
            "preset": "cpu",
            "run_name": "default",
            "dataset": _dataset_of_preset,
            "max_minutes": None,
            "max_steps": None,
            "compare_tokens": 1_500_000,
            "compare_steps": None,
            "compare_minutes": None,
        },
        "tiny": {
            "preset": "tiny",
            "run_name": "tiny",
            "dataset": "machado-tiny",
            "max_minutes": None,
            "max_steps": 30,
            "compare_tokens": None,
            "compare_steps": 10,
            "compare_minutes": None,
        },
    },
    "03_expert_utilization": {
        "default": {
            "run_name": "default",
            "compare_run_name": None,
            "dataset": _dataset_of_run("machado"),
            "n_windows": 256,
            "per_category": 64,
        },
        "tiny": {  # the fixed-window comparison run of notebook 02 stands in as the second run
            "run_name": "tiny",
            "compare_run_name": _compare_run_of,
            "dataset": _dataset_of_run("machado-tiny"),
            "n_windows": 32,
            "per_category": 8,
        },
    },
    "04_sampling": {
        "default": {"run_name": "default", "max_new_tokens": 300},
        "tiny": {"run_name": "tiny", "max_new_tokens": 40},
    },
    "05_experiments": {
        "default": {"study": "window-schedule-quick"},  # a few minutes; the reference study is "window-schedule"
        "tiny": {"study": "tiny"},
    },
    "06_forecasting": {
        "default": {
            "pretrained": _pretrained_path("pretrained.pt"),  # what `moelab forecast pretrain` writes
            "pretrain_settings": {},  # PretrainConfig's defaults: 12 minutes
            "benchmark": _all_benchmark_series,
            "fine_tune_steps": FINE_TUNE_STEPS,
            "n_paths": 100,
            "run_name": "default",
        },
        "tiny": {
            "pretrained": _pretrained_path("pretrained-tiny.pt"),
            "pretrain_settings": {"context": 48, "horizon": 18, "n_bins": 128, "limit": 6.0, "batch_size": 8, "max_steps": 20,
                                  "max_minutes": None, "warmup_steps": 2, "eval_every": 10, "val_windows": 16,
                                  "model": {"n_layers": 2, "n_heads": 2, "n_embd": 32, "n_experts": 4, "top_k": 2,
                                            "n_common_experts": 1, "expert_hidden": 64, "dropout": 0.0, "pos_encoding": "rope"}},
            "benchmark": ["datasets/AirPassengers", "fpp2/ausbeer"],
            "fine_tune_steps": 4,
            "n_paths": 20,
            "run_name": "tiny",
        },
    },
}


class Settings(dict):
    """Parameter values by name, in the order they were passed, plus where each came from."""

    def __init__(self, values: dict[str, Any], profile: str, from_profile: set[str]):
        super().__init__(values)
        self.profile = profile
        self.from_profile = from_profile

    def summary(self) -> str:
        """One line: the profile, the values the user gave, the values the profile filled in."""
        given = ", ".join(f"{k}={v!r}" for k, v in self.items() if k not in self.from_profile)
        filled = ", ".join(f"{k}={v!r}" for k, v in self.items() if k in self.from_profile)
        return f"profile {self.profile!r}; given: {given or 'nothing'}; from the profile: {filled or 'nothing'}"


def resolve_profile(profile: str | None = None) -> str:
    """The profile to run: ``profile`` if given, else ``$MOELAB_PROFILE`` if set, else ``default``."""
    if profile is None:
        from_env = os.environ.get(PROFILE_ENV)
        if from_env:
            if from_env not in PROFILES:
                raise ValueError(f"${PROFILE_ENV}={from_env!r} is not one of {', '.join(map(repr, PROFILES))}")
            return from_env
        return "default"
    check_choice("profile", profile, PROFILES)
    return profile


def notebook_settings(notebook: str, profile: str | None, *, context: dict[str, Any] | None = None, **passed: Any) -> Settings:
    """The profile-dependent parameters of ``notebook`` with every ``None`` replaced by the profile's value.

    Pass each of the notebook's profile-dependent parameters by name (the table
    ``PROFILE_SETTINGS`` lists them); values that are not ``None`` come back unchanged.
    The result is ordered as passed, so ``a, b = notebook_settings(nb, p, a=a, b=b).values()``.
    ``context``: other parameters a profile's value is computed from (e.g. notebook 01's
    ``source``, which names its dataset), never changed and not returned. Values computed from
    other settings are computed in the order passed, so a later one sees an earlier one's.
    """
    if notebook not in PROFILE_SETTINGS:
        raise ValueError(f"notebook_settings: unknown notebook {notebook!r}; known: {', '.join(PROFILE_SETTINGS)}")
    chosen = resolve_profile(profile)
    table = PROFILE_SETTINGS[notebook][chosen]
    unknown = [name for name in passed if name not in table]
    missing = [name for name in table if name not in passed]
    if unknown or missing:
        problems = ([f"unknown parameter(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing parameter(s) {', '.join(missing)}"] if missing else []
        )
        raise TypeError(
            f"notebook_settings({notebook!r}): {'; '.join(problems)}. "
            f"The profiles set exactly: {', '.join(table)}"
        )
    from_profile = {name for name, value in passed.items() if value is None}
    resolved = {name: table[name] if name in from_profile else value for name, value in passed.items()}
    for name in [n for n in passed if n in from_profile]:  # in the order passed: a value may follow an earlier one
        if callable(resolved[name]):
            resolved[name] = resolved[name]({**(context or {}), **resolved})
    return Settings(resolved, chosen, from_profile)


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"parameter {name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, (int, float)) and low < value < high):
        raise ValueError(f"parameter {name}={value!r} must be a number between {low} and {high} (exclusive)")
