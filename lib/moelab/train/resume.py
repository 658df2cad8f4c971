"""A run's checkpoints as the Trainer uses them: the newest one a run can resume from, and
writing a new one while keeping only the last few."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig, config_diff
from moelab.data.tokenizer import tokenizer_from_record, tokenizer_record
from moelab.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from moelab.runs.files import list_checkpoints


def newest_resumable(
    folder: Path, run_name: str, model_config: ModelConfig, tokenizer, dataset: str
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``folder`` and its payload (on the CPU), or None if none is readable.

    A damaged file is skipped with a warning, never used. A readable checkpoint of another
    model config, or trained with another tokenizer than the dataset now has, is an error.
    """
    for path in reversed(list_checkpoints(folder)):
        try:
            payload = load_checkpoint(path, map_location="cpu")  # RNG states must stay CPU tensors
        except CheckpointError as err:
            warnings.warn(f"skipping unreadable checkpoint: {err}", stacklevel=3)
            continue
        diff = config_diff(ModelConfig.from_dict(payload["model_config"]), model_config)
        if diff:
            raise CheckpointError(f"cannot resume {run_name}: the model config differs in {', '.join(diff)}")
        if tokenizer_record(tokenizer_from_record(payload["extra"].get("tokenizer"))) != tokenizer_record(tokenizer):
            raise CheckpointError(
                f"cannot resume {run_name}: its checkpoint was trained with another tokenizer than the dataset "
                f"{dataset!r} now has (was it prepared again with another tokenizer or vocab_size?)"
            )
        return path, payload
    return None


def save_keeping_last(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_config: TrainConfig,
    step: int,
    extra: dict[str, Any],
) -> None:
    """Write the checkpoint (atomically), then delete all but the newest ``train_config.keep_checkpoints``."""
    save_checkpoint(path, model, train_config=train_config, optimizer=optimizer, step=step, extra=extra)
    for old in list_checkpoints(path.parent)[: -train_config.keep_checkpoints]:
        old.unlink(missing_ok=True)
