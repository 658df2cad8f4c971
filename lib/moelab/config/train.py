"""TrainConfig: how to train (budget, optimizer, schedules), its validation, and config_diff.

Names follow the seed repository where it had one (``current_context_window``,
``context_window_step``). The config validates itself on construction and raises a
``ValueError`` that names the field and what it accepts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from moelab.config.fields import check, check_known_fields, check_positive_int, check_types
from moelab.config.model import ModelConfig

BATCH_KEEPS = ("sequences", "tokens")
PRECISIONS = ("auto", "fp32", "bf16")
BUDGET_FIELDS = ("max_steps", "max_tokens", "max_minutes")  # TrainConfig: training ends at the first reached
OPTIMIZERS = ("adamw", "muon")  # see moelab.train.optim


@dataclass
class TrainConfig:
    """How to train: budget, optimizer, schedules and the seed's context-window warmup.

    Budget: ``max_steps`` optimizer steps, ``max_tokens`` training tokens and/or
    ``max_minutes`` of wall time, whichever ends first (steps and tokens do not depend on
    the machine's speed: prefer them for comparisons); the learning-rate and window schedules are defined over the budget's
    progress (0 → 1), so a time budget gets a complete schedule too.

    The window starts at ``current_context_window`` tokens and grows by
    ``context_window_step`` until it reaches the model's ``context_window``, at
    ``window_warmup_fraction`` of the budget (0 = a fixed full window). ``batch_keep``
    says what stays constant while the window grows: the number of sequences per
    batch (``sequences``: batch_size sequences, as the seed did) or the number of
    tokens (``tokens``: batch_size × context_window tokens, so more, shorter
    sequences early on).

    ``optimizer``: ``adamw``, or ``muon`` (Muon for the attention and expert matrices, AdamW
    for the rest; :mod:`moelab.train.optim`). Both follow the one learning-rate schedule, and
    both decay the matrices by ``weight_decay``.
    """

    max_steps: int | None = 1000
    max_minutes: float | None = None
    max_tokens: int | None = None
    batch_size: int = 32
    optimizer: str = "adamw"  # one of OPTIMIZERS: "muon" = Muon for the hidden matrices, AdamW for the rest
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 50  # linear learning-rate warmup
    weight_decay: float = 0.1  # on matrices, embeddings included; not biases, norms, router-noise weights
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    grad_accum_steps: int = 1
    current_context_window: int = 16
    context_window_step: int = 16
    window_warmup_fraction: float = 0.3
    batch_keep: str = "sequences"  # one of BATCH_KEEPS
    eval_every: int = 100  # steps between validation evaluations
    eval_windows: int = 256  # fixed validation windows, evenly spaced over the split
    checkpoint_every: int = 250
    keep_checkpoints: int = 2  # older periodic checkpoints are deleted
    log_every: int = 10  # steps between metric rows
    seed: int = 1337
    precision: str = "auto"  # one of PRECISIONS; see moelab.train.precision
    compile: bool = False  # torch.compile the model for training steps
    cuda_graphs: bool = True  # on CUDA, replay each training step from a CUDA graph where it can (moelab.train.cuda_graph)

    ALIASES: ClassVar[dict[str, str]] = {"learning_rate": "lr", "epochs": "max_steps"}

    def __post_init__(self) -> None:
        check_types(self)
        self.betas = tuple(self.betas)
        for name in (
            "batch_size",
            "grad_accum_steps",
            "current_context_window",
            "context_window_step",
            "eval_every",
            "eval_windows",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
        ):
            check_positive_int(getattr(self, name), name)
        self._validate_budget()
        self._validate_optimizer()
        check(
            0 <= self.window_warmup_fraction <= 1,
            "window_warmup_fraction",
            f"must be in [0, 1], got {self.window_warmup_fraction!r}",
        )
        check(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}",
        )
        check(isinstance(self.compile, bool), "compile", f"must be true or false, got {self.compile!r}")
        check(isinstance(self.cuda_graphs, bool), "cuda_graphs", f"must be true or false, got {self.cuda_graphs!r}")
        check(
            self.batch_keep in BATCH_KEEPS,
            "batch_keep",
            f"must be one of {', '.join(BATCH_KEEPS)}; got {self.batch_keep!r}",
        )

    def _validate_budget(self) -> None:
        """max_steps, max_tokens and max_minutes: each positive or None, and at least one given."""
        if self.max_steps is not None:
            check_positive_int(self.max_steps, "max_steps")
        if self.max_tokens is not None:
            check_positive_int(self.max_tokens, "max_tokens")
        if self.max_minutes is not None:
            check(self.max_minutes > 0, "max_minutes", f"must be > 0 or None, got {self.max_minutes!r}")
        check(
            any(getattr(self, name) is not None for name in BUDGET_FIELDS),
            "max_steps",
            "give a budget: max_steps, max_tokens and/or max_minutes (training stops at the first reached)",
        )

    def _validate_optimizer(self) -> None:
        """The optimizer and its settings: lr and its schedule, weight decay, betas, gradient clipping."""
        check(
            self.optimizer in OPTIMIZERS,
            "optimizer",
            f"must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}",
        )
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            "warmup_steps",
            f"must be an integer >= 0, got {self.warmup_steps!r}",
        )
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        check(
            len(self.betas) == 2 and all(0 <= x < 1 for x in self.betas),
            "betas",
            f"must be two numbers in [0, 1), got {self.betas!r}",
        )
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip!r}")

    def check_against(self, model: ModelConfig) -> None:
        """Validate the fields that depend on the model (the window schedule)."""
        check(
            self.current_context_window <= model.context_window,
            "current_context_window",
            f"must be <= the model's context_window={model.context_window}, got {self.current_context_window}",
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = {cls.ALIASES.get(k, k): v for k, v in values.items()}
        check_known_fields(cls, values)
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def config_diff(old: ModelConfig | TrainConfig, new: ModelConfig | TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of one kind: {field: (old, new)}."""
    before, after = old.to_dict(), new.to_dict()
    return {k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)}
