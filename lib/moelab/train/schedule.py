"""Schedules over a training budget: the context window, the learning rate, the budget itself.

Both schedules are functions of *progress* in [0, 1], the share of the budget used,
so a step budget and a time budget ("the best model in 10 CPU-minutes") get the
same complete schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig


@dataclass(frozen=True)
class Budget:
    """Training ends at ``max_steps``, ``max_tokens`` or ``max_minutes``, whichever comes first.

    Steps and tokens do not depend on the machine's speed or load (prefer them for
    comparisons); minutes do.
    """

    max_steps: int | None
    max_minutes: float | None
    max_tokens: int | None = None

    def progress(self, step: int, elapsed_s: float, tokens: int = 0) -> float:
        shares = []
        if self.max_steps is not None:
            shares.append(step / self.max_steps)
        if self.max_tokens is not None:
            shares.append(tokens / self.max_tokens)
        if self.max_minutes is not None:
            shares.append(elapsed_s / (60.0 * self.max_minutes))
        return min(1.0, max(shares))

    def done(self, step: int, elapsed_s: float, tokens: int = 0) -> bool:
        return self.progress(step, elapsed_s, tokens) >= 1.0


@dataclass(frozen=True)
class WindowSchedule:
    """Sequence-length warmup: ``start``, ``start + step``, … up to ``maximum`` tokens.

    The growth is spread evenly over the first ``warmup_fraction`` of the budget:
    with S distinct windows, window i is used from progress ``i/(S-1) · warmup_fraction``
    on, so the full window is reached exactly at ``warmup_fraction``. A fixed window
    is the same object with ``start == maximum`` (or ``warmup_fraction == 0``).
    """

    start: int
    maximum: int
    step: int
    warmup_fraction: float

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.maximum:
            raise ValueError(f"window start must be in 1..{self.maximum}, got {self.start}")
        if self.step < 1:
            raise ValueError(f"window step must be >= 1, got {self.step}")

    @classmethod
    def from_configs(cls, model: ModelConfig, train: TrainConfig) -> "WindowSchedule":
        train.check_against(model)
        return cls(train.current_context_window, model.context_window, train.context_window_step, train.window_warmup_fraction)

    @property
    def windows(self) -> list[int]:
        sizes = list(range(self.start, self.maximum, self.step))
        return sizes + [self.maximum]

    def window(self, progress: float) -> int:
        sizes = self.windows
        if len(sizes) == 1 or self.warmup_fraction == 0 or progress >= self.warmup_fraction:
            return self.maximum
        stage = int(progress / self.warmup_fraction * (len(sizes) - 1))
        return sizes[min(stage, len(sizes) - 1)]

    def batch_sequences(self, window: int, batch_size: int, keep: str) -> int:
        """Sequences per batch at this window: constant, or sized to keep batch_size × maximum tokens."""
        if keep == "sequences":
            return batch_size
        return max(1, batch_size * self.maximum // window)

    def check_world_size(self, batch_size: int, keep: str, world_size: int) -> None:
        """Every batch of the schedule must split evenly over ``world_size`` processes."""
        sizes = {w: self.batch_sequences(w, batch_size, keep) for w in self.windows}
        uneven = [w for w, n in sizes.items() if n % world_size]
        if uneven:
            raise ValueError(
                f"batch_size: with {world_size} processes every batch must split evenly, but at window(s) {uneven} "
                f"the batch has {[sizes[w] for w in uneven]} sequences; choose a batch_size that makes them "
                f"multiples of {world_size} (batch_size is the global batch)"
            )


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup over ``warmup_steps``, times a cosine from ``lr`` to ``lr · min_ratio`` over progress."""

    lr: float
    warmup_steps: int
    min_ratio: float

    def __call__(self, step: int, progress: float) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return self.lr * warmup * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
