"""What a run reads from its prepared dataset: the tokenizer, the training batches, the validation windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig
from moelab.data import bytes_per_token, check_dataset_vocab, load_dataset, load_split
from moelab.data.batches import WindowSampler, fixed_windows
from moelab.data.tokenizer import piece_lengths


@dataclass
class RunData:
    tokenizer: Any  # the dataset's (bytes or BPE)
    sampler: WindowSampler  # this rank's random training windows
    val_x: Tensor  # the fixed validation windows and their targets
    val_y: Tensor
    # bits per byte = nats / ln 2 / UTF-8 bytes, whatever a token holds (1 byte for the bytes tokenizer)
    val_bytes_per_token: float  # of the validation targets
    train_bytes_per_token: float  # the training split's mean

    @classmethod
    def load(cls, dataset: str, model: ModelConfig, train: TrainConfig, rank: int = 0, world_size: int = 1) -> RunData:
        """The run's data from the prepared ``dataset``, checked against the model's vocabulary."""
        prepared = load_dataset(dataset)
        check_dataset_vocab(prepared, model.vocab_size)
        sampler = WindowSampler(load_split(dataset, "train"), train.seed, rank, world_size)
        val_x, val_y = fixed_windows(load_split(dataset, "val"), model.context_window, train.eval_windows)
        val_bytes = piece_lengths(prepared.tokenizer)[val_y].double().mean().item()
        return cls(prepared.tokenizer, sampler, val_x, val_y, val_bytes, bytes_per_token(prepared.meta, "train"))
