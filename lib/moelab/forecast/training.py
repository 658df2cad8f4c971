"""The forecasters' training loop: batches of token windows, next-bin cross-entropy, the best weights kept.

Training one series from scratch, pretraining on many and fine-tuning a pretrained model
all run :func:`fit`: a budget of steps and/or minutes with warmup and cosine decay, a
validation loss over the horizon positions (the forecast's own task) before training and
every ``eval_every`` steps, and the weights of the step where it was lowest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from moelab.config.train import TrainConfig
from moelab.nn.model import Transformer, eval_mode
from moelab.train.optim import make_optimizer
from moelab.train.schedule import Budget, LRSchedule
from moelab.train.step import TrainStep

BAR_TICKS = 1000  # the progress bar counts thousandths of the budget


@dataclass(frozen=True)
class FitSettings:
    lr: float
    max_steps: int | None
    max_minutes: float | None
    warmup_steps: int
    eval_every: int
    optimizer: str = "adamw"


@dataclass
class FitResult:
    losses: pd.DataFrame  # step, loss (nats), lr, val_loss (at step 0 and every eval_every steps)
    best_step: int  # the step whose weights the model holds (the last one without validation)
    seconds: float


def fit(model: Transformer, draw: Callable[[], torch.Tensor], held: torch.Tensor | None, horizon: int,
        settings: FitSettings, progress: bool = True, desc: str = "training") -> FitResult:  # fmt: skip
    """Train ``model`` on batches ``draw()`` (token windows (B, T) on the model's device) until the budget ends.

    ``held``: validation windows; their loss over the last ``horizon`` positions picks the
    weights kept (the untrained model is a candidate too). None: the last step's weights.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    train_config = TrainConfig(optimizer=settings.optimizer, lr=settings.lr, max_steps=settings.max_steps,
                               max_minutes=settings.max_minutes, warmup_steps=settings.warmup_steps)  # fmt: skip
    train_step = TrainStep(model, make_optimizer(model, train_config, device), grad_clip=train_config.grad_clip)
    budget = Budget(settings.max_steps, settings.max_minutes)
    lr_at = LRSchedule(settings.lr, settings.warmup_steps, train_config.min_lr_ratio)
    best, rows, step = _Best(), [], 0
    if held is not None:
        rows.append({"step": 0, "loss": math.nan, "lr": 0.0, "val_loss": horizon_loss(model, held, horizon)})
        best.offer(rows[-1]["val_loss"], 0, model)
    start, progress_now = time.perf_counter(), 0.0
    bar = tqdm(total=BAR_TICKS, desc=desc, disable=not progress, leave=False)
    model.train()
    while progress_now < 1.0:
        lr = lr_at(step, progress_now)
        batch = draw()
        loss = train_step([(batch[:, :-1], batch[:, 1:])], lr).parts[0].item()
        step += 1
        progress_now = budget.progress(step, time.perf_counter() - start)
        rows.append({"step": step, "loss": loss, "lr": lr, "val_loss": math.nan})
        if held is not None and (step % settings.eval_every == 0 or progress_now >= 1.0):
            rows[-1]["val_loss"] = horizon_loss(model, held, horizon)
            best.offer(rows[-1]["val_loss"], step, model)
        bar.update(int(BAR_TICKS * progress_now) - bar.n)
        bar.set_postfix(step=step, loss=f"{loss:.3f}", refresh=False)
    bar.close()
    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    return FitResult(pd.DataFrame(rows), best.step if best.state is not None else step, time.perf_counter() - start)


class _Best:
    """The weights of the step with the lowest validation loss so far."""

    def __init__(self) -> None:
        self.loss, self.step, self.state = math.inf, 0, None

    def offer(self, loss: float, step: int, model: Transformer) -> None:
        if loss < self.loss:
            self.loss, self.step = loss, step
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def horizon_loss(model: Transformer, windows: torch.Tensor, horizon: int, batch_size: int = 256) -> float:
    """Mean cross-entropy (nats) of the last ``horizon`` tokens of each window given the ones before."""
    total, count = 0.0, 0
    with eval_mode(model):
        for part in windows.split(batch_size):
            logits = model(part[:, :-1]).logits[:, -horizon:]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                       part[:, -horizon:].reshape(-1), reduction="sum").item()  # fmt: skip
            count += part[:, -horizon:].numel()
    return total / count
