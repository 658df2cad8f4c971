"""The named presets, as data.

Each preset is a description, the ModelConfig / TrainConfig fields whose values differ from
the defaults in :mod:`moelab.config.model` and :mod:`moelab.config.train` (every other field
keeps its default), and the prepared dataset it trains on unless told otherwise
(``DEFAULT_DATASET`` where it names none): the tokenizer is part of a recipe.
``preset(name)`` builds fresh configs from the table, ``build_configs`` adds overrides
(the command line's ``--set`` / ``--config`` and notebook 02's parameters).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig

DEFAULT_DATASET = "machado"  # bytes; a preset may name another prepared dataset (e.g. a BPE one)
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "description": "The seed repository's example hyperparameters (vocabulary widened to all 256 bytes).",
        "model": {"n_layers": 6, "n_embd": 1028, "context_window": 32, "n_common_experts": 2, "dropout": 0.1},
        "train": {"max_steps": 2000, "batch_size": 64, "lr": 1e-4, "current_context_window": 8, "context_window_step": 8},
    },
    "cpu": {
        "description": "The default: learns visibly in a few minutes on a 2-core CPU.",
        # byte-level BPE of 2,048 tokens: at this preset's budget (5.94 M tokens, 4 seeds) it beat
        # bytes by -0.195 bits per byte, Holm-adjusted p 0.0015 (reports/reference/experiments)
        "dataset": "machado-bpe2048",
        "model": {"vocab_size": 2048, "n_common_experts": 1, "expert_hidden": 256, "pos_encoding": "rope"},
        # Muon at 8e-3: the design-lr study (3 seeds, 1.5 M tokens: -0.30 bits per byte against
        # AdamW at 2e-3) and the 10-minute run re-measured (README, "MoE design choices")
        "train": {"max_steps": None, "max_minutes": 10.0, "optimizer": "muon", "lr": 8e-3, "batch_keep": "tokens"},
    },
    "long": {
        "description": "An hour on a 2-core CPU: a wider model for a longer budget.",
        "model": {"n_heads": 6, "n_embd": 192, "n_common_experts": 1, "expert_hidden": 384, "pos_encoding": "rope"},
        # Muon at 8e-3, as cpu: the 60-minute run on one machine, 1.834 against AdamW's 1.876 bits per byte
        # on the whole validation split (README, "MoE design choices")
        "train": {
            "max_steps": None,
            "max_minutes": 60.0,
            "optimizer": "muon",
            "lr": 8e-3,
            "batch_keep": "tokens",
            "eval_every": 250,
            "checkpoint_every": 500,
        },
    },
    "tiny": {
        "description": "Seconds on a CPU: for tests and smoke runs.",
        "model": {"n_layers": 2, "n_heads": 2, "n_embd": 32, "context_window": 16, "n_experts": 4,
                  "n_common_experts": 1, "expert_hidden": 64},
        "train": {
            "max_steps": 20,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 2,
            "current_context_window": 8,
            "context_window_step": 4,
            "eval_every": 10,
            "eval_windows": 8,
            "checkpoint_every": 10,
            "log_every": 2,
            "precision": "fp32",  # the same numbers on every machine (tests compare them)
        },
    },
}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig = field(repr=False)
    train: TrainConfig = field(repr=False)
    dataset: str = DEFAULT_DATASET  # what `moelab train`, notebook 02 and a sweep train on unless told otherwise


def preset(name: str) -> Preset:
    """Fresh configs of a named preset (``seed``, ``cpu``, ``long`` or ``tiny``)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; choose one of {', '.join(PRESETS)}")
    entry = PRESETS[name]
    model, train = ModelConfig(**entry["model"]), TrainConfig(**entry["train"])
    return Preset(name, entry["description"], model, train, entry.get("dataset", DEFAULT_DATASET))


def build_configs(preset_name: str, overrides: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """A preset with overrides; each field goes to ModelConfig or TrainConfig by its name."""
    chosen = preset(preset_name)
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} | {"num_embeds"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} | set(TrainConfig.ALIASES)
    unknown = sorted(set(overrides) - model_fields - train_fields)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}. Model fields: {', '.join(sorted(model_fields))}. "
            f"Training fields: {', '.join(sorted(train_fields))}."
        )
    model_changes = {k: v for k, v in overrides.items() if k in model_fields}
    train_changes = {k: v for k, v in overrides.items() if k in train_fields}
    if "num_embeds" in model_changes:
        model_changes["n_embd"] = model_changes.pop("num_embeds")
    model = chosen.model.replace(**model_changes)
    train = TrainConfig.from_dict({**chosen.train.to_dict(), **train_changes})
    train.check_against(model)
    return model, train


def presets_table():
    """The named presets as a pandas DataFrame (one row each, parameter counts included)."""
    import pandas as pd

    rows = []
    for p in (preset(name) for name in PRESETS):
        m, t = p.model, p.train
        counts = m.param_counts()
        rows.append(
            {
                "preset": p.name,
                "dataset": p.dataset,
                "n_layers": m.n_layers,
                "n_heads": m.n_heads,
                "n_embd": m.n_embd,
                "context_window": m.context_window,
                "window_start": t.current_context_window,
                "window_step": t.context_window_step,
                "n_experts": m.n_experts,
                "top_k": m.top_k,
                "n_common_experts": m.n_common_experts,
                "pos_encoding": m.pos_encoding,
                "batch_size": t.batch_size,
                "lr": t.lr,
                "max_steps": t.max_steps,
                "params_total": counts["total"],
                "params_active": counts["active"],
                "description": p.description,
            }
        )
    return pd.DataFrame(rows).set_index("preset")
