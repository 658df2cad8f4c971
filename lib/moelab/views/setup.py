"""One call per notebook: its profile's settings, every check of its parameters, and what it loads.

A notebook's first cell after its imports hands its parameters to one of these functions
and takes back, under the parameters' own names, what the later cells use::

    setup = training_setup(profile, preset=preset, run_name=run_name, ...)
    preset, run_name, dataset, ... = setup.settings.values()

Every check runs before anything is trained or written, with a message that names the
parameter. The parameters' defaults live in the notebooks' ``parameters`` cells, so
these functions take every one of them by name, without defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig
from moelab.config.presets import build_configs
from moelab.data import DECODE_POLICIES, PreparedDataset, check_tokenizer_choice, load_dataset, with_dataset_vocab
from moelab.forecast.corpus import benchmark_series
from moelab.forecast.forecaster import MIN_PATHS
from moelab.forecast.pretrain import PretrainConfig
from moelab.nn.model import Transformer
from moelab.paths import reports_dir
from moelab.runs.checkpoint import load_model, load_tokenizer
from moelab.runs.files import latest_checkpoint
from moelab.views.notebook import Settings, check_choice, check_range, notebook_settings

IF_EXISTS = ("error", "resume", "overwrite")

# Notebook 02's parameters that set a config field (None: the preset's value), by the field they set.
RUN_FIELDS = {
    "lr": "learning_rate",
    "batch_size": "batch_size",
    "current_context_window": "current_context_window",
    "context_window_step": "context_window_step",
    "window_warmup_fraction": "window_warmup_fraction",
    "n_experts": "n_experts",
    "top_k": "top_k",
    "max_minutes": "max_minutes",
    "max_steps": "max_steps",
    "seed": "seed",
}


def data_prep_settings(
    profile: str | None, *, source: str, dataset: str | None, max_works_per_category: int | None,
    tokenizer: str | None, vocab_size: int | None, decode_errors: str, val_fraction: float, test_fraction: float,
) -> Settings:  # fmt: skip
    """Notebook 01's settings (``tokenizer``, ``vocab_size``, ``dataset``, ``max_works_per_category``), after
    checking its parameters."""
    settings = notebook_settings(
        "01_data_prep", profile, tokenizer=tokenizer, vocab_size=vocab_size, dataset=dataset,
        max_works_per_category=max_works_per_category, context={"source": source},  # its dataset is named after it
    )  # fmt: skip
    check_tokenizer_choice(settings["tokenizer"], settings["vocab_size"])
    check_choice("decode_errors", decode_errors, DECODE_POLICIES)
    check_range("val_fraction", val_fraction, 0, 0.5)
    check_range("test_fraction", test_fraction, 0, 0.5)
    return settings


@dataclass
class TrainingSetup:
    """What notebook 02 trains: its settings, the dataset, both configs, and the comparison's budget."""

    settings: Settings  # preset, run_name, dataset, max_minutes, max_steps, compare_tokens, compare_steps, compare_minutes
    preset: str
    run_name: str
    dataset: str
    prepared: PreparedDataset
    model_config: ModelConfig
    train_config: TrainConfig
    run_overrides: dict[str, Any]  # every field the run sets, the dataset's vocab_size included
    compare_budget: dict[str, Any]  # max_tokens, max_steps, max_minutes of each comparison run (None: unset)
    compare_label: str  # the budget in words, e.g. "10 steps per run"
    figures: Path  # reports/<run_name>/figures/, created

    def summary(self) -> str:
        """Two lines: the settings and where they came from; the preset, run, dataset and budget."""
        tokenizer, train = self.prepared.tokenizer, self.train_config
        return (
            f"{self.settings.summary()}\npreset {self.preset!r}, run {self.run_name!r}, dataset {self.dataset!r} "
            f"({tokenizer.name} tokenizer, {tokenizer.vocab_size} tokens), "
            f"budget: {train.max_steps or '-'} steps / {train.max_minutes or '-'} min"
        )


def budget_label(budget: dict[str, Any]) -> str:
    """A comparison run's budget in words: ``{"max_steps": 10}`` is "10 steps per run",
    ``{"max_tokens": 1_500_000}`` "1.5 M tokens per run"."""
    units = (("max_tokens", "tokens"), ("max_steps", "steps"), ("max_minutes", "min"))
    amount = lambda v: f"{v / 1e6:g} M" if v >= 1e6 else f"{v:,g}"  # noqa: E731
    return " or ".join(f"{amount(budget[key])} {unit}" for key, unit in units if budget.get(key) is not None) + " per run"


def training_setup(
    profile: str | None, *, preset: str | None, run_name: str | None, dataset: str | None, max_minutes: float | None,
    max_steps: int | None, learning_rate: float | None, batch_size: int | None, current_context_window: int | None,
    context_window_step: int | None, window_warmup_fraction: float | None, n_experts: int | None, top_k: int | None,
    overrides: dict, seed: int, if_exists: str, nproc: int, compare: bool, compare_tokens: int | None,
    compare_steps: int | None, compare_minutes: float | None,
) -> TrainingSetup:  # fmt: skip
    """Notebook 02's parameters checked, filled from the profile and turned into the run's configs.

    Checks the profile, ``if_exists``, ``nproc`` and that ``compare=True`` has a budget before
    it opens the dataset (whose vocabulary the model takes) and builds the configs (which check
    every field); creates ``reports/<run_name>/figures/``.
    """
    settings = notebook_settings(
        "02_train", profile, preset=preset, run_name=run_name, dataset=dataset, max_minutes=max_minutes,
        max_steps=max_steps, compare_tokens=compare_tokens, compare_steps=compare_steps, compare_minutes=compare_minutes,
    )  # fmt: skip
    check_choice("if_exists", if_exists, IF_EXISTS)
    if not (isinstance(nproc, int) and nproc >= 1):
        raise ValueError(f"parameter nproc={nproc!r} must be a positive integer (processes for torchrun)")
    budget = {"max_tokens": settings["compare_tokens"], "max_steps": settings["compare_steps"],
              "max_minutes": settings["compare_minutes"]}  # fmt: skip
    if compare and all(v is None for v in budget.values()):
        raise ValueError("compare=True needs a budget per run: compare_tokens, compare_steps or compare_minutes (or compare=False)")
    given = {"learning_rate": learning_rate, "batch_size": batch_size, "current_context_window": current_context_window,
             "context_window_step": context_window_step, "window_warmup_fraction": window_warmup_fraction,
             "n_experts": n_experts, "top_k": top_k, "seed": seed, **settings}  # fmt: skip
    chosen = {field: given[name] for field, name in RUN_FIELDS.items() if given[name] is not None}
    run_overrides = with_dataset_vocab({**chosen, **overrides}, settings["dataset"])  # bytes: 256
    prepared = load_dataset(settings["dataset"])
    model_config, train_config = build_configs(settings["preset"], run_overrides)
    figures = reports_dir() / settings["run_name"] / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return TrainingSetup(
        settings, settings["preset"], settings["run_name"], settings["dataset"], prepared, model_config, train_config,
        run_overrides, budget, budget_label(budget), figures,
    )  # fmt: skip


def resolve_layer(layer: int | None, n_layers: int) -> int:
    """Notebook 03's ``layer`` as an index 0..n_layers-1: None is the last, a negative one counts from the end."""
    if layer is None:
        return n_layers - 1
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"parameter layer={layer!r}: the model has {n_layers} layers (0 to {n_layers - 1}, or negative from the end)")
    return layer % n_layers


@dataclass
class UtilizationSetup:
    """What notebook 03 looks at: its settings, the run's latest checkpoint, model and tokenizer, one layer."""

    settings: Settings  # run_name, compare_run_name, dataset, n_windows, per_category
    checkpoint: Path
    model: Transformer
    tokenizer: Any  # the run's own (bytes or BPE)
    layer: int  # 0..n_layers-1
    out: Path  # reports/<run_name>/, with figures/ created

    def summary(self) -> str:
        """Two lines: the settings; the checkpoint, the tokenizer and the model's shape."""
        config, tokenizer = self.model.config, self.tokenizer
        return (
            f"{self.settings.summary()}\n{self.checkpoint} · {tokenizer.name} tokenizer ({tokenizer.vocab_size} tokens) · "
            f"{config.n_layers} layers × {config.n_experts} experts, top-{config.top_k}, {config.n_common_experts} common"
        )


def utilization_setup(
    profile: str | None, *, run_name: str | None, compare_run_name: str | None, dataset: str | None,
    n_windows: int | None, per_category: int | None, layer: int | None,
) -> UtilizationSetup:  # fmt: skip
    """Notebook 03's settings, the run's model and tokenizer (from its latest checkpoint) and ``layer`` resolved."""
    settings = notebook_settings(
        "03_expert_utilization", profile, run_name=run_name, compare_run_name=compare_run_name, dataset=dataset,
        n_windows=n_windows, per_category=per_category,
    )  # fmt: skip
    checkpoint = latest_checkpoint(settings["run_name"])
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    layer = resolve_layer(layer, model.config.n_layers)
    out = reports_dir() / settings["run_name"]
    (out / "figures").mkdir(parents=True, exist_ok=True)
    return UtilizationSetup(settings, checkpoint, model, tokenizer, layer, out)


@dataclass
class ForecastingSetup:
    """What notebook 06 works with: its settings, the pretraining config, the forecaster's path and the held-out series."""

    settings: Settings  # pretrained, pretrain_settings, benchmark, fine_tune_steps, n_paths, run_name
    config: PretrainConfig  # what pretraining here uses when there is no forecaster at ``path``
    path: Path  # the pretrained forecaster, loaded if it exists
    series: dict[str, np.ndarray]  # the held-out series to score, by name
    figures: Path  # reports/<run_name>/figures/, created


def forecasting_setup(
    profile: str | None, *, pretrained: str | None, pretrain_settings: dict | None, benchmark: list | None,
    n_origins: int, fine_tune_steps: int | None, n_paths: int | None, run_name: str | None,
) -> ForecastingSetup:  # fmt: skip
    """Notebook 06's settings, every one checked (and every held-out series loaded) before any training."""
    settings = notebook_settings("06_forecasting", profile, pretrained=pretrained, pretrain_settings=pretrain_settings,
                                 benchmark=benchmark, fine_tune_steps=fine_tune_steps, n_paths=n_paths, run_name=run_name)  # fmt: skip
    counts = {"n_origins": (n_origins, 1), "fine_tune_steps": (settings["fine_tune_steps"], 0),
              "n_paths": (settings["n_paths"], MIN_PATHS)}  # fmt: skip
    for name, (value, low) in counts.items():
        if not (isinstance(value, int) and value >= low):
            raise ValueError(f"parameter {name}={value!r} must be an integer >= {low}")
    if not isinstance(settings["pretrain_settings"], dict):
        raise ValueError(f"parameter pretrain_settings={settings['pretrain_settings']!r} must be a dict of PretrainConfig fields")
    try:
        config = PretrainConfig(**settings["pretrain_settings"])
    except TypeError as exc:
        raise ValueError(f"parameter pretrain_settings: {exc}; the fields: {', '.join(PretrainConfig.__dataclass_fields__)}") from None
    loaded = benchmark_series(settings["benchmark"])
    too_long = [f"{spec.name} ({spec.horizon})" for spec, _ in loaded if spec.horizon > config.horizon]
    if too_long:
        raise ValueError(f"horizons longer than the forecaster's {config.horizon}: {', '.join(too_long)}")
    figures = reports_dir() / settings["run_name"] / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    series = {spec.name: values for spec, values in loaded}
    return ForecastingSetup(settings, config, Path(settings["pretrained"]), series, figures)
