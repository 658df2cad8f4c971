"""What one optimizer step logs: its outcome, and the metric row of metrics.parquet it becomes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moelab.data.stats import LN2
from moelab.nn.moe.metrics import load_columns
from moelab.train.state import TrainerState
from moelab.train.step import StepResult


@dataclass
class StepOutcome:
    """What one optimizer step did: its batch shape, learning rate and :class:`StepResult`."""

    window: int
    sequences: int
    lr: float
    result: StepResult  # routing: the last micro-batch's records, on logged steps only
    log_now: bool


def metric_row(
    state: TrainerState,
    outcome: StepOutcome,
    *,
    progress: float,
    precision: str,
    train_bytes_per_token: float,
    tokens_per_s: float,
    routed_experts: int,
) -> dict[str, Any]:
    """The row of the step just taken (validation columns NaN until the Trainer evaluates).

    ``train_bpb`` converts the training cross-entropy with the training split's mean bytes
    per token; with ``routed_experts`` > 0 and routing recorded, the load columns of every
    layer (:func:`moelab.nn.moe.metrics.load_columns`) follow.
    """
    parts = outcome.result.parts
    row = {
        "step": state.step,
        "tokens": state.tokens,
        "elapsed_s": state.elapsed_s,
        "progress": progress,
        "window": outcome.window,
        "batch_sequences": outcome.sequences,
        "lr": outcome.lr,
        "precision": precision,
        "loss": parts[0].item(),
        "ce_loss": parts[1].item(),
        "aux_loss": parts[2].item(),
        "z_loss": parts[3].item(),
        "train_bpb": parts[1].item() / LN2 / train_bytes_per_token,
        "grad_norm": outcome.result.grad_norm,
        "tokens_per_s": tokens_per_s,
        "val_loss": math.nan,
        "val_bpb": math.nan,
    }
    if outcome.result.routing is not None and routed_experts:
        row.update(load_columns(outcome.result.routing, routed_experts))
    return row
