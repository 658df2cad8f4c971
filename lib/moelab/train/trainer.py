"""The Trainer: one training loop for the notebook and the command line.

``Trainer(model_config, train_config, run_name).fit()`` reads as its steps:

* ``_start``: output folders, model + optimizer + data (``_build``), the latest
  checkpoint when resuming (``_restore``), DDP / torch.compile (``_wrap``), ``config.json``;
* then, until the budget (steps, tokens and/or minutes) is spent, per optimizer step:
  ``_train_step`` (learning rate, micro-batches, the loss parts, divergence check,
  gradient clipping, optimizer step, balance biases; on CUDA one CUDA graph replay,
  :mod:`moelab.train.cuda_graph`, where the step allows it), ``_log_row`` every ``log_every`` steps,
  ``_evaluate`` every ``eval_every``, ``_save`` a checkpoint every ``checkpoint_every``;
* ``_finish``: the TrainResult.

Batches follow the context-window schedule, the learning rate warmup + cosine over the
budget. Metric rows go to ``reports/<run>/metrics.parquet``, routing snapshots to
``reports/<run>/routing.parquet``, checkpoints to ``data/checkpoints/<run>/`` (:mod:`moelab.runs.files`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig
from moelab.data.batches import to_device
from moelab.data.stats import LN2
from moelab.data.tokenizer import tokenizer_record
from moelab.device import device_name, resolve_device
from moelab.nn.model import Transformer, eval_mode
from moelab.nn.moe.metrics import routing_rows
from moelab.paths import check_run_name
from moelab.runs.checkpoint import CheckpointError
from moelab.runs.files import (
    TrainResult,
    checkpoint_dir,
    clear_run,
    latest_checkpoint,
    list_checkpoints,
    prepare_folders,
    run_reports_dir,
    write_records,
)
from moelab.runs.registry import TensorBoardLog, now, set_status, start_run, summary
from moelab.train import distributed
from moelab.train.cuda_graph import CaptureError, GraphedStep, graph_blocker
from moelab.train.metric_row import StepOutcome, metric_row
from moelab.train.optim import load_optimizer_state, make_optimizer
from moelab.train.precision import bf16_step_speedup, resolve_precision
from moelab.train.progress import make_progress
from moelab.train.resume import newest_resumable, save_keeping_last
from moelab.train.run_data import RunData
from moelab.train.schedule import Budget, LRSchedule, WindowSchedule
from moelab.train.state import TrainerState, restore_streams, rng_state
from moelab.train.step import NonFiniteLoss, StepResult, TrainStep
from moelab.train.validation import mean_loss


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """Trains a Transformer on a prepared dataset (``moelab.data.prepare_dataset``).

    ``callbacks`` are called with each metric row (a dict) as it is logged; the
    notebook's live plot is one. ``progress`` shows a progress bar, or with the
    environment variable ``MOELAB_PROGRESS=log`` a status line every
    ``progress_every_s`` seconds (see :mod:`moelab.train.progress`).

    ``device``: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` (:func:`moelab.device.resolve_device`); printed at the start and
    recorded in ``config.json`` with the GPU's name. On CUDA the batches are copied from
    pinned memory without blocking.
    """

    progress_every_s: float = 10.0

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        run_name: str,
        *,
        dataset: str = "machado",
        device: str | torch.device | None = "auto",
        progress: bool = True,
        callbacks: Iterable[Callable[[dict], None]] = (),
    ) -> None:
        model_config.validate()
        train_config.check_against(model_config)
        check_run_name(run_name)
        self.model_config = model_config
        self.train_config = train_config
        self.run_name = run_name
        self.dataset = dataset
        self.dist, self.device = distributed.setup(resolve_device(device))
        self.device_name = device_name(self.device)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.windows = WindowSchedule.from_configs(model_config, train_config)
        self.lr_schedule = LRSchedule(train_config.lr, train_config.warmup_steps, train_config.min_lr_ratio)
        self.budget = Budget(train_config.max_steps, train_config.max_minutes, train_config.max_tokens)
        self.checkpoints = checkpoint_dir(run_name)
        self.reports = run_reports_dir(run_name)
        self.precision, self.precision_reason = resolve_precision(train_config.precision, self.device, self._bf16_speedup)
        self.windows.check_world_size(train_config.batch_size, train_config.batch_keep, self.dist.world_size)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        """Train until the budget is spent.

        An existing run is an error unless ``resume`` (continue from its latest
        checkpoint) or ``overwrite`` (delete its checkpoints and metrics first).
        ``stop_after_steps`` ends this session early, with a checkpoint, after that many
        steps; the budget and schedules stay the run's own, so a later ``resume``
        continues exactly where it stopped.
        """
        if resume and overwrite:
            raise ValueError("choose resume or overwrite, not both")
        if stop_after_steps is not None and not (isinstance(stop_after_steps, int) and stop_after_steps > 0):
            raise ValueError(f"stop_after_steps must be a positive integer or None, got {stop_after_steps!r}")
        self._start(resume, overwrite)
        last_step = math.inf if stop_after_steps is None else self.state.step + stop_after_steps
        cfg = self.train_config
        try:
            while not self._budget_spent() and self.state.step < last_step:
                outcome = self._train_step()
                done = self._budget_spent()
                evaluate_now = self.state.step % cfg.eval_every == 0 or done
                if outcome.log_now or evaluate_now:
                    row = self._log_row(outcome)
                    if evaluate_now:
                        self._evaluate(row)
                    self._record(row)
                if self.state.step % cfg.checkpoint_every == 0 or done or self.state.step == last_step:
                    self.last_checkpoint = self._save()
                self._show_progress()
        except BaseException as err:  # the registry says how the run ended; the error goes on
            if self.dist.is_main:
                set_status(self.reports, "interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                           error=f"{type(err).__name__}: {err}"[:500], ended=now())  # fmt: skip
            raise
        finally:
            self.display.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            self._write_metrics()
        return self._finish()

    def _start(self, resume: bool, overwrite: bool) -> None:
        """Folders, model and data, the checkpoint to resume from, the wrapped model, config.json."""
        main = self.dist.is_main
        if main:
            prepare_folders(self.checkpoints, self.reports)
            if overwrite:
                clear_run(self.checkpoints, self.reports)
        distributed.barrier()
        self._build()
        self.last_checkpoint = self._restore() if resume else None
        self._wrap()
        if resume and self.last_checkpoint is None and list_checkpoints(self.checkpoints):
            raise CheckpointError(f"no readable checkpoint in {self.checkpoints} to resume from")
        if not resume and list_checkpoints(self.checkpoints):
            raise FileExistsError(
                f"run {self.run_name!r} already has checkpoints in {self.checkpoints}; "
                "resume it (resume=True / --resume), overwrite it (overwrite=True), or choose another run name"
            )
        self.tensorboard = None
        if main:
            start_run(self.reports, self._run_info(), resumed=resume)
            self.tensorboard = TensorBoardLog(self.reports, self.state.step)
        self.model.train()
        if self.progress and main:
            print(
                f"{self.run_name}: precision {self.precision} ({self.precision_reason}), device {self.device}"
                + (f" ({self.device_name})" if self.device.type == "cuda" else "")
                + (", torch.compile" if self.train_config.compile else "")
                + (f", CUDA graphs {self._run_info()['cuda_graphs']}" if self.device.type == "cuda" else "")
            )
        self.clock_start = time.perf_counter()  # training time = now - clock_start + elapsed_before
        self.elapsed_before = self.state.elapsed_s  # training time of the earlier sessions
        self.last_log_time, self.last_log_tokens = self.state.elapsed_s, self.state.tokens
        self.val_loss = math.nan
        self.display = make_progress(self.run_name, self.progress and main, self.progress_every_s)
        self._show_progress()

    def _train_step(self) -> StepOutcome:
        """One optimizer step over ``grad_accum_steps`` micro-batches of the current window."""
        cfg = self.train_config
        progress = self._progress()
        window = self.windows.window(progress)
        sequences = self.windows.batch_sequences(window, cfg.batch_size, cfg.batch_keep)
        lr = self.lr_schedule(self.state.step, progress)
        log_now = (self.state.step + 1) % cfg.log_every == 0
        self.train_step.set_lr(lr)
        try:  # (the first step is eager: it creates the optimizer state the graph updates)
            graphed = self.graphed is not None and self.state.step > 0
            result = self._graphed_step(sequences, window, lr) if graphed else None
            if result is None:
                batches = (self._device_batch(sequences, window) for _ in range(cfg.grad_accum_steps))
                no_sync = self.step_model.no_sync if self.dist.enabled else None  # DDP reduces after the last one
                result = self.train_step(batches, accumulate=cfg.grad_accum_steps, record=log_now,
                                         no_sync=no_sync, record_module=self.routing_model)  # fmt: skip
        except NonFiniteLoss as err:
            raise TrainingDiverged(
                f"the loss became {err.loss} at step {self.state.step + 1} (window {window}, lr {lr:.2e}). "
                f"Training stopped; the last good checkpoint is {self.last_checkpoint or 'none (no checkpoint yet)'}. "
                "Lower the learning rate, raise warmup_steps, or set grad_clip."
            ) from None
        self.state.step += 1
        self.state.tokens += sequences * window * cfg.grad_accum_steps
        self.state.elapsed_s = self.elapsed_before + time.perf_counter() - self.clock_start
        if self.dist.enabled:  # one clock for the budget, or ranks would stop at different steps
            self.state.elapsed_s = distributed.all_reduce(torch.tensor([self.state.elapsed_s]), "max").item()
        result.routing = result.routing if log_now else None
        return StepOutcome(window, sequences, lr, result, log_now)

    def _device_batch(self, sequences: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.sampler.batch(sequences, window)
        return to_device(x, self.device), to_device(y, self.device)

    def _graphed_step(self, sequences: int, window: int, lr: float) -> StepResult | None:
        """One CUDA graph replay; None (graphs off from now on, with a warning) if the capture failed."""
        try:
            return self.graphed.step(*self.data.sampler.batch(sequences, window), lr)
        except CaptureError as err:  # the eager step that follows draws a new batch
            warnings.warn(f"CUDA graphs off: the capture failed ({err}); training eagerly", stacklevel=3)
            self.graphed, self.graph_blocker = None, f"the capture failed: {err}"[:300]
            return None

    def _val_bpb(self, nats_per_token: float) -> float:
        """Validation bits per byte of the text (nats / ln 2 / the bytes the validation targets stand for)."""
        return nats_per_token / LN2 / self.data.val_bytes_per_token

    def _log_row(self, outcome: StepOutcome) -> dict[str, Any]:
        """The metric row of the step just taken (validation columns NaN until ``_evaluate``)."""
        elapsed, tokens = self.state.elapsed_s, self.state.tokens
        rate = (tokens - self.last_log_tokens) / max(elapsed - self.last_log_time, 1e-9)
        self.last_log_time, self.last_log_tokens = elapsed, tokens
        routed = self.model_config.routed_experts if self.model_config.is_moe else 0
        return metric_row(self.state, outcome, progress=self._progress(), precision=self.precision, tokens_per_s=rate,
                          train_bytes_per_token=self.data.train_bytes_per_token, routed_experts=routed)  # fmt: skip

    def _evaluate(self, row: dict[str, Any]) -> None:
        """Validation loss into the row, and a routing snapshot; its time is not training time."""
        eval_start = time.perf_counter()
        self.val_loss = mean_loss(self.model, self.data.val_x, self.data.val_y, self.train_config.batch_size, self.device)
        row["val_loss"], row["val_bpb"] = self.val_loss, self._val_bpb(self.val_loss)
        if self.dist.is_main:
            self._routing_snapshot()
        self.clock_start += time.perf_counter() - eval_start

    def _record(self, row: dict[str, Any]) -> None:
        self.state.rows.append(row)
        for callback in [*self.callbacks, self.tensorboard] if self.dist.is_main else ():
            callback(row)
        self.display.show_row(row, self._val_bpb(self.val_loss))

    def _bf16_speedup(self) -> float:
        """fp32 / bf16 step time of this model, the mean over ranks (so every rank picks the same precision)."""
        ratio = bf16_step_speedup(self.model_config, self.train_config.batch_size, self.device)
        return distributed.all_reduce(torch.tensor([ratio])).item() / self.dist.world_size

    def _progress(self) -> float:
        """How much of the budget is spent, 0 to 1."""
        return self.budget.progress(self.state.step, self.state.elapsed_s, self.state.tokens)

    def _budget_spent(self) -> bool:
        return self.budget.done(self.state.step, self.state.elapsed_s, self.state.tokens)

    def _show_progress(self) -> None:
        self.display.update(self._progress(), self.state.step, self.state.tokens, self.state.elapsed_s)

    def _finish(self) -> TrainResult:
        if self.last_checkpoint is None:  # resumed a run whose budget was already spent
            self.last_checkpoint = latest_checkpoint(self.checkpoints)
        distributed.barrier()
        if math.isnan(self.val_loss):
            self.val_loss = mean_loss(self.model, self.data.val_x, self.data.val_y, self.train_config.batch_size, self.device)
        val_loss, metrics = self.val_loss, self.metrics()
        if self.dist.is_main:  # a session ended by stop_after_steps is resumable, not finished
            done = self._budget_spent()
            set_status(self.reports, "finished" if done else "interrupted", ended=now(), **summary(metrics))
        size = (self.state.step, self.state.tokens, self.state.elapsed_s)
        return TrainResult(self.run_name, *size, val_loss, self._val_bpb(val_loss), self.last_checkpoint, metrics)

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        self.data = RunData.load(self.dataset, self.model_config, self.train_config, self.dist.rank, self.dist.world_size)
        torch.manual_seed(self.train_config.seed)  # the same initial weights on every rank
        self.model = Transformer(self.model_config).to(self.device)
        self.optimizer = make_optimizer(self.model, self.train_config, self.device)
        if self.dist.enabled:  # each rank its own dropout and router-noise stream
            torch.manual_seed(self.train_config.seed * 7919 + self.dist.rank)
        self.state = TrainerState()

    def _wrap(self) -> None:
        """The module training steps call: DDP under torchrun, then torch.compile if asked for.

        Every parameter gets a gradient in every step, also an expert that no token of
        this rank chose (the stacked experts' backward returns zeros for it), so DDP
        needs no ``find_unused_parameters`` pass and never waits for a missing gradient.
        """
        self.step_model = distributed.ddp(self.model, self.device) if self.dist.enabled else self.model
        self.routing_model = self.step_model  # routing records run uncompiled (they return extra tensors)
        if self.train_config.compile:
            if self.model_config.dropout:  # inductor's own dropout RNG measured ~12% slower on CPU
                torch._inductor.config.fallback_random = True
            self.step_model = torch.compile(self.step_model)
        cfg = self.train_config  # on CUDA, steps replayed from CUDA graphs where nothing prevents it
        self.graph_blocker = graph_blocker(
            self.model_config, cfg, self.device, self.precision, self.optimizer, self.dist.enabled
        )
        reduce = distributed.all_reduce if self.dist.enabled else None
        self.train_step = TrainStep(self.model, self.optimizer, grad_clip=cfg.grad_clip, precision=self.precision,
                                    forward=self.step_model, reduce=reduce, world_size=self.dist.world_size)  # fmt: skip
        self.graphed = None if self.graph_blocker else GraphedStep(self.train_step)

    def _restore(self) -> Path | None:
        """Model, optimizer and trainer state from the newest checkpoint that fits the run; its path."""
        found = newest_resumable(self.checkpoints, self.run_name, self.model_config, self.data.tokenizer, self.dataset)
        if found is None:
            return None
        path, payload = found
        self.model.load_state_dict(payload["model"])
        load_optimizer_state(self.optimizer, self.model, payload["optimizer"])
        self.state = TrainerState.from_checkpoint(payload, self.reports)
        reseed = self.train_config.seed * 7919 + self.dist.rank + 104729 * self.state.step
        restore_streams(payload["extra"], self.data.sampler, self.dist.rank, self.dist.world_size, self.device, reseed)
        return path

    # ------------------------------------------------------------------ records
    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(self.state.rows)

    @torch.no_grad()
    def _routing_snapshot(self) -> None:
        """Per-layer expert load and mean router probability on the first validation windows."""
        if not self.model_config.is_moe:
            return
        n = min(len(self.data.val_x), self.train_config.batch_size)
        with eval_mode(self.model):
            out = self.model(self.data.val_x[:n].to(self.device), record_routing=True)
        self.state.routing_rows.extend(routing_rows(self.state.step, out.routing, self.model_config.routed_experts))

    def _write_metrics(self) -> None:
        if self.dist.is_main:
            write_records(self.reports, self.run_name, self.state.rows, self.state.routing_rows)

    def _save(self) -> Path:
        """Rank 0 writes metrics then the checkpoint (with every rank's RNG state); all ranks wait for it."""
        rng_ranks = distributed.all_gather_object(rng_state(self.device))
        path = self.checkpoints / f"ckpt_{self.state.step:07d}.pt"
        if not self.dist.is_main:
            distributed.barrier()
            return path
        extra = self.state.checkpoint_extra(self.data.sampler, rng_ranks, run_name=self.run_name, dataset=self.dataset,
                                            tokenizer=tokenizer_record(self.data.tokenizer))  # fmt: skip
        try:
            self._save_files(path, extra)
        finally:
            distributed.barrier()
        return path

    def _save_files(self, path: Path, extra: dict) -> None:
        # metrics first: a kill between the two writes leaves metrics ahead of the latest
        # checkpoint (resume drops those rows and redoes the steps), never behind it
        self._write_metrics()
        save_keeping_last(path, self.model, self.optimizer, self.train_config, self.state.step, extra)

    def _run_info(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "dataset": self.dataset,
            "device": str(self.device),
            "device_name": self.device_name,
            "world_size": self.dist.world_size,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "cuda_graphs": "on" if self.graphed else f"off: {self.graph_blocker}",
            "torch": str(torch.__version__),
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "params": self.model_config.param_counts(),
        }

