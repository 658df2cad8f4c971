"""Notebook 02's comparison: the same budget for the window schedule, a fixed window, a dense model."""

from __future__ import annotations

import pandas as pd

from .config import ModelConfig, TrainConfig
from .trainer import Trainer


def comparison_variants(model: ModelConfig, train: TrainConfig) -> dict[str, tuple[ModelConfig, TrainConfig]]:
    """The three runs notebook 02 compares at one budget: the schedule, a fixed window, a dense model."""
    return {
        "MoE, window schedule": (model, train),
        "MoE, fixed window": (model, train.replace(current_context_window=model.context_window)),
        "dense, same active parameters": (model.dense_equivalent(), train),
    }


def run_comparison(
    variants: dict[str, tuple[ModelConfig, TrainConfig]],
    run_prefix: str,
    *,
    dataset: str = "machado",
    max_minutes: float | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    device: str = "auto",
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Train each variant with the same budget (runs ``<run_prefix>-<n>``, overwritten each time).

    Returns a results table (one row per variant) and each run's metrics.
    """
    rows, curves = [], {}
    for number, (name, (model, train)) in enumerate(variants.items(), start=1):
        budgeted = train.replace(max_minutes=max_minutes, max_steps=max_steps)
        trainer = Trainer(model, budgeted, f"{run_prefix}-{number}", dataset=dataset, progress=progress, device=device)
        result = trainer.fit(overwrite=True)
        counts = model.param_counts()
        rows.append(
            {
                "variant": name,
                "run": trainer.run_name,
                "steps": result.steps,
                "tokens (M)": result.tokens / 1e6,
                "minutes": result.elapsed_s / 60,
                "tokens/s": result.tokens / max(result.elapsed_s, 1e-9),
                "params total": counts["total"],
                "params active": counts["active"],
                "val_bpb": result.val_bpb,
            }
        )
        curves[name] = result.metrics
    return pd.DataFrame(rows).set_index("variant"), curves
