"""Notebook 02's comparison as a sweep: the window schedule, a fixed window, a dense model, one budget.

The runs are an ordinary sweep (:mod:`moelab.sweep`) named ``<run_name>-compare``, so
notebook 02 and notebook 05 share one implementation, and more seeds turn the
comparison into one with confidence intervals.
"""

from __future__ import annotations

from typing import Any

from moelab.config.model import ModelConfig
from moelab.config.train import BUDGET_FIELDS
from moelab.sweep.spec import BUDGET_KINDS, load_spec

VARIANTS = ("schedule", "fixed", "dense")


def comparison_spec(
    run_name: str,
    preset: str,
    dataset: str,
    overrides: dict[str, Any],
    model: ModelConfig,
    budget: dict[str, Any],
    seeds: list[int],
) -> dict[str, Any]:
    """The sweep spec of notebook 02's comparison of the run ``run_name``.

    ``overrides``: the main run's config overrides on ``preset`` (its budget and seed are
    replaced by ``budget`` and ``seeds``). Variants: ``schedule`` (the main run's configs),
    ``fixed`` (the full window from the first step), ``dense`` (one feed-forward as wide as
    the MoE's active experts together: the same active parameters per token).
    """
    base = {k: v for k, v in overrides.items() if k not in (*BUDGET_FIELDS, "seed")}
    dense = model.dense_equivalent()
    return {
        "name": f"{run_name}-compare",
        "description": f"notebook 02's comparison of run {run_name}",
        "base": {"preset": preset, "dataset": dataset, **base},
        "budget": {kind: budget[field] for kind, field in BUDGET_KINDS.items() if budget.get(field) is not None},
        "seeds": list(seeds),
        "variants": {
            "schedule": {},
            "fixed": {"current_context_window": model.context_window},
            "dense": {"n_experts": 0, "n_common_experts": 1, "expert_hidden": dense.expert_hidden},
        },
    }


def comparison_run(run_name: str, variant: str = "fixed") -> str:
    """The first-seed run of one variant of run ``run_name``'s comparison (reads its spec.yaml)."""
    from moelab.sweep.runner import sweep_dir

    path = sweep_dir(f"{run_name}-compare") / "spec.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"run {run_name!r} has no comparison ({path} is missing): run notebook 02 with compare=True")
    spec = load_spec(path, check_dataset=False)
    return spec.run_name(variant, spec.seeds[0])
