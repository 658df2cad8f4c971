"""Routing metrics, in one place: slots and load per expert, how unevenly a layer is loaded, and the
columns and rows the Trainer logs (metrics.parquet, routing.parquet) that sweeps and notebooks read.

Load is the share of routed token *slots* (tokens × k) an expert receives; a layer's balance
is measured the same way for every balance choice by :func:`load_imbalance` (CV and MaxVio).
"""

from __future__ import annotations

import torch
from torch import Tensor

def slot_counts(expert_indices: Tensor, n_experts: int) -> Tensor:
    """Slots per expert, (n_experts,) int64, of chosen expert ids of any shape.

    A scatter-add into a fixed-size tensor: unlike ``torch.bincount``, which reads the largest
    id back to the host on CUDA, it never stops the GPU's queue.
    """
    ids = expert_indices.reshape(-1)
    return torch.zeros(n_experts, dtype=torch.long, device=ids.device).index_add_(0, ids, torch.ones_like(ids))


def expert_load(expert_indices: Tensor, n_experts: int) -> Tensor:
    """Share of routed token slots each expert receives, shape (n_experts,), summing to 1.

    expert_indices: chosen expert ids of any shape (tokens × top_k slots).
    """
    slots = slot_counts(expert_indices, n_experts).float()
    return slots / max(expert_indices.numel(), 1)


def load_imbalance(load: Tensor) -> tuple[Tensor, Tensor]:
    """How unevenly a layer's load is spread: (load CV, MaxVio), each of shape ``load.shape[:-1]``.

    load (..., N): per-expert load, as slot counts or shares (both measures are scale-free).
    CV = std / mean (the population std over the N experts); MaxVio = (max_i load_i − mean)
    / mean (Wang et al. 2024, arXiv 2408.15664). Both are 0 for a perfectly balanced layer;
    with all load on one of N experts, CV = sqrt(N − 1) and MaxVio = N − 1.
    """
    load = load.double()
    mean = load.mean(dim=-1)
    return load.std(dim=-1, correction=0) / mean, (load.amax(dim=-1) - mean) / mean


def load_columns(routing, n_experts: int) -> dict[str, float]:
    """Metric-row columns per layer: ``load_l{layer}_e{expert}``, the share of routed token slots
    per expert, and the layer's balance ``load_cv_l{layer}``, ``maxvio_l{layer}`` (:func:`load_imbalance`).

    ``n_experts``: the routed experts as the router sees them (``ModelConfig.routed_experts``).
    """
    columns = {}
    for layer, record in enumerate(routing):
        load = expert_load(record.experts, n_experts).cpu()  # one copy to the host per layer
        for expert, share in enumerate(load.tolist()):
            columns[f"load_l{layer}_e{expert}"] = share
        cv, maxvio = (v.item() for v in load_imbalance(load))
        columns[f"load_cv_l{layer}"], columns[f"maxvio_l{layer}"] = cv, maxvio
    return columns


def routing_rows(step: int, routing, n_experts: int) -> list[dict]:
    """Rows of routing.parquet: per layer and expert, its load and mean router probability (importance),
    with the layer's ``load_cv`` and ``maxvio`` (:func:`load_imbalance`) on each of its rows."""
    rows = []
    for layer, record in enumerate(routing):
        shares = expert_load(record.experts, n_experts).cpu()  # one copy to the host per layer
        load = shares.tolist()
        importance = record.probs.reshape(-1, n_experts).mean(0).tolist()
        cv, maxvio = (v.item() for v in load_imbalance(shares))
        for expert in range(n_experts):
            rows.append({"step": step, "layer": layer, "expert": expert, "load": load[expert],
                         "importance": importance[expert], "load_cv": cv, "maxvio": maxvio})  # fmt: skip
    return rows


def final_maxvio(metrics, last: int = 10) -> float:
    """The run's expert imbalance at the end: MaxVio averaged over layers and its last ``last`` logged
    steps of its metrics table (a DataFrame of :func:`load_columns` rows; NaN for a dense model or a
    run that logged no routing)."""
    columns = [c for c in metrics.columns if c.startswith("maxvio_l")]
    if not columns:
        return float("nan")
    return float(metrics[columns].dropna(how="all").tail(last).mean(axis=1).mean())
