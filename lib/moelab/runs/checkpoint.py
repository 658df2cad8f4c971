"""Checkpoints: atomic save, safe load, a model rebuilt from the file alone.

A checkpoint is a plain dict of tensors and primitive values (no pickled classes), so
it loads with ``torch.load(weights_only=True)``: a file crafted to run code on load
is refused. It is written to a temporary file in the same folder, flushed to disk and
renamed over the target, so a crash mid-write never leaves a half-written checkpoint
under the real name.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig, config_diff
from moelab.nn.model import Transformer
from moelab.data.tokenizer import tokenizer_from_record
from moelab.paths import atomic_write
from moelab.device import resolve_device

FORMAT = "moelab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says why and what to do."""


def save_checkpoint(
    path: str | os.PathLike,
    model: Transformer,
    *,
    train_config: TrainConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model (and optionally training state) so ``load_model(path)`` rebuilds it."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torch_version": str(torch.__version__),
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "extra": extra or {},
    }
    try:
        return atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as err:
        raise CheckpointError(
            f"could not write checkpoint {path}: {err.strerror or err}. "
            "Free disk space or choose a writable folder; any earlier checkpoint there is untouched."
        ) from err


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint file; raises CheckpointError with a clear reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}; check the run name or train a model first")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains Python objects other than tensors and plain data, "
            "which could run code when loaded. moelab checkpoints never do; only load files you trust, "
            "and re-save them with moelab.save_checkpoint."
        ) from err
    except Exception as err:  # zip/CRC/EOF errors from a truncated or damaged file
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted: {type(err).__name__}). "
            "Delete it and use an earlier checkpoint, or re-train."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a moelab checkpoint (no '{FORMAT}' marker)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this moelab reads versions up to "
            f"{FORMAT_VERSION}. Update moelab to load it."
        )
    return payload


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    expect_config: ModelConfig | None = None,
) -> Transformer:
    """Rebuild the model stored in a checkpoint (its config comes from the file), in eval mode.

    ``map_location``: the device the model is put on: ``"cpu"`` (the default), ``"auto"``
    (CUDA when present), ``"cuda"``, ``"cuda:N"`` (:func:`moelab.device.resolve_device`).

    With ``expect_config``, a checkpoint of a different architecture is an error that
    names the fields that differ.
    """
    map_location = resolve_device(map_location)
    payload = load_checkpoint(path, map_location)
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} carries an invalid model config: {err}") from err
    if expect_config is not None:
        changed = config_diff(expect_config, config).items()
        diff = [f"{k}: checkpoint {theirs!r} vs expected {ours!r}" for k, (ours, theirs) in changed]
        if diff:
            raise CheckpointError(f"{path} was trained with a different config: " + "; ".join(diff))
    model = Transformer(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match its own config ({err})") from err
    return model.to(map_location).eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer a checkpoint's model was trained with (bytes for checkpoints from before there was a choice).

    A checkpoint whose model's vocabulary is not its tokenizer's (a BPE model saved without
    its tokenizer) is an error: its tokens cannot be turned into text.
    """
    payload = load_checkpoint(path)
    record = (payload.get("extra") or {}).get("tokenizer")
    tokenizer = tokenizer_from_record(record)
    vocab = payload["model_config"].get("vocab_size", 256)
    if tokenizer.vocab_size != vocab:
        held = "no tokenizer" if record is None else f"a {tokenizer.name} tokenizer of {tokenizer.vocab_size} tokens"
        raise CheckpointError(
            f"{path}: its model has a vocabulary of {vocab} tokens but the checkpoint holds {held}; "
            "it was not saved by moelab's Trainer with its dataset's tokenizer, so its tokens cannot be read as text"
        )
    return tokenizer
