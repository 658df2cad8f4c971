"""The Trainer: one loop for the notebook and the command line.

``python -m moelab.train --preset cpu --run-name NAME [--resume] [--config FILE.yaml] [--set field=value ...]``

Every batch uses the current window of the context-window schedule; the learning
rate follows linear warmup + cosine over the budget (steps and/or minutes). Metrics
go to ``reports/<run>/metrics.parquet`` (one row every ``log_every`` steps, with
validation rows every ``eval_every``), routing snapshots to
``reports/<run>/routing.parquet``, checkpoints to ``data/checkpoints/<run>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig, config_diff, preset
from .data import CorpusError, load_split
from .model import Transformer, eval_mode
from .moe import expert_load
from .optim import make_optimizer
from .paths import atomic_write, check_run_name, data_dir, reports_dir
from .precision import autocast, resolve_precision
from .schedule import Budget, LRSchedule, WindowSchedule

LN2 = math.log(2.0)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ============================================================================ data


class WindowSampler:
    """Random training windows from a byte array, with resumable state.

    Every rank draws the same global batch from one seeded stream and keeps its own
    contiguous share of the rows (rank r of W: rows r·n/W … (r+1)·n/W), so the data
    a rank sees is a deterministic function of (seed, rank), W processes together see
    exactly the batches of one process, and a resumed run may change the world size.
    """

    def __init__(self, data: np.ndarray, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.data = torch.from_numpy(np.array(data, dtype=np.uint8))
        self.generator = torch.Generator().manual_seed(seed * 1009)
        self.rank, self.world_size = rank, world_size

    def batch(self, sequences: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch of ``sequences`` windows."""
        if len(self.data) <= window + 1:
            raise ValueError(f"the training split has {len(self.data)} bytes, fewer than a window of {window} + 1")
        if sequences % self.world_size:
            raise ValueError(
                f"a batch of {sequences} sequences cannot be split evenly over {self.world_size} processes"
            )
        starts = torch.randint(0, len(self.data) - window - 1, (sequences,), generator=self.generator)
        share = sequences // self.world_size
        starts = starts[self.rank * share : (self.rank + 1) * share]
        chunk = self.data[starts.unsqueeze(1) + torch.arange(window + 1)].long()
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def fixed_windows(data: np.ndarray, window: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced windows over data (the same every evaluation), as (x, y)."""
    if len(data) <= window + 1:
        raise ValueError(
            f"the validation split has {len(data)} bytes, fewer than one window of {window} + 1; "
            "use a larger corpus or a larger val_fraction"
        )
    count = min(count, len(data) - window - 1)
    starts = torch.linspace(0, len(data) - window - 1, count).long()
    tensor = torch.from_numpy(np.array(data, dtype=np.uint8))
    chunk = tensor[starts.unsqueeze(1) + torch.arange(window + 1)].long()
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def mean_loss(model: Transformer, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy in nats over every position of the given windows.

    Under torchrun each rank scores every W-th window and the sums are reduced, so all
    ranks return the mean over all windows.
    """
    info = distributed.from_env() if torch.distributed.is_initialized() else distributed.DistInfo()
    x, y = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            total += model(xb, yb).ce_loss.item() * yb.numel()
            count += yb.numel()
    total, count = distributed.all_reduce(torch.tensor([total, count])).tolist()
    return total / count


# ============================================================================ files


def checkpoint_dir(run_name: str) -> Path:
    return data_dir() / "checkpoints" / run_name


def run_reports_dir(run_name: str) -> Path:
    return reports_dir() / run_name


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    return sorted(Path(folder).glob("ckpt_*.pt"))


def latest_checkpoint(run_or_folder: str | os.PathLike) -> Path:
    """The newest checkpoint of a run (a run name, or its checkpoint folder)."""
    folder = Path(run_or_folder)
    if not folder.is_dir():
        folder = checkpoint_dir(str(run_or_folder))
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(
            f"no checkpoints in {folder}; train the run first (notebook 02 or python -m moelab.train)"
        )
    return found[-1]


# ============================================================================ the trainer


@dataclass
class TrainResult:
    run_name: str
    steps: int
    tokens: int
    elapsed_s: float
    val_loss: float
    val_bpb: float
    checkpoint: Path
    metrics: pd.DataFrame


class Trainer:
    """Trains a Transformer on a prepared dataset (``moelab.data.prepare_dataset``).

    ``callbacks`` are called with each metric row (a dict) as it is logged; the
    notebook's live plot is one.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        run_name: str,
        *,
        dataset: str = "machado",
        device: str | torch.device | None = None,
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
        self.dist, self.device = distributed.setup(
            torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        )
        self.progress = progress
        self.callbacks = list(callbacks)
        self.windows = WindowSchedule.from_configs(model_config, train_config)
        self.lr_schedule = LRSchedule(train_config.lr, train_config.warmup_steps, train_config.min_lr_ratio)
        self.budget = Budget(train_config.max_steps, train_config.max_minutes)
        self.checkpoints = checkpoint_dir(run_name)
        self.reports = run_reports_dir(run_name)
        self.precision, self.precision_reason = resolve_precision(train_config.precision, self.device)
        self._check_world_size()

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        torch.manual_seed(self.train_config.seed)  # the same initial weights on every rank
        self.model = Transformer(self.model_config).to(self.device)
        self.optimizer = make_optimizer(self.model, self.train_config, self.device)
        self.sampler = WindowSampler(
            load_split(self.dataset, "train"), self.train_config.seed, self.dist.rank, self.dist.world_size
        )
        if self.dist.enabled:  # each rank its own dropout and router-noise stream
            torch.manual_seed(self.train_config.seed * 7919 + self.dist.rank)
        self.val_x, self.val_y = fixed_windows(
            load_split(self.dataset, "val"), self.model_config.context_window, self.train_config.eval_windows
        )
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.rows: list[dict] = []
        self.routing_rows: list[dict] = []

    def _wrap(self) -> None:
        """The module training steps call: DDP under torchrun, then torch.compile if asked for.

        Every parameter gets a gradient in every step, also an expert that no token of
        this rank chose (the stacked experts' backward returns zeros for it), so DDP
        needs no ``find_unused_parameters`` pass and never waits for a missing gradient.
        """
        self.step_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.model, device_ids=ids)
        self.routing_model = self.step_model  # routing records run uncompiled (they return extra tensors)
        if self.train_config.compile:
            if self.model_config.dropout:  # inductor's own dropout RNG measured ~12% slower on CPU
                torch._inductor.config.fallback_random = True
            self.step_model = torch.compile(self.step_model)

    def _restore(self) -> Path | None:
        candidates = list_checkpoints(self.checkpoints)
        for path in reversed(candidates):  # the newest readable one (a damaged file is skipped, not used)
            try:
                payload = load_checkpoint(path, map_location=self.device)
            except CheckpointError as err:
                warnings.warn(f"skipping unreadable checkpoint: {err}", stacklevel=2)
                continue
            diff = config_diff(ModelConfig.from_dict(payload["model_config"]), self.model_config)
            if diff:
                raise CheckpointError(f"cannot resume {self.run_name}: the model config differs in {', '.join(diff)}")
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            state = payload["extra"]
            self.step, self.tokens, self.elapsed_before = payload["step"], state["tokens"], state["elapsed_s"]
            self.sampler.load_state_dict(state["sampler"])
            ranks = state.get("rng_ranks") or [{"cpu": state["rng_cpu"], "cuda": state.get("rng_cuda")}]
            if len(ranks) == self.dist.world_size:
                torch.set_rng_state(ranks[self.dist.rank]["cpu"])
                if self.device.type == "cuda" and ranks[self.dist.rank]["cuda"] is not None:
                    torch.cuda.set_rng_state(ranks[self.dist.rank]["cuda"], self.device)
            else:  # another world size: data, optimizer and schedules continue exactly, noise streams restart
                torch.manual_seed(self.train_config.seed * 7919 + self.dist.rank + 104729 * self.step)
            for name, target in (("metrics.parquet", self.rows), ("routing.parquet", self.routing_rows)):
                if (self.reports / name).is_file():
                    frame = pd.read_parquet(self.reports / name)
                    target.extend(frame[frame["step"] <= self.step].to_dict("records"))
            return path
        return None

    # ------------------------------------------------------------------ loop
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
        main = self.dist.is_main
        if main:
            self._prepare_folders()
            if overwrite:
                for path in list_checkpoints(self.checkpoints):
                    path.unlink()
                for name in ("metrics.parquet", "routing.parquet"):
                    (self.reports / name).unlink(missing_ok=True)
        distributed.barrier()
        self._build()
        restored = self._restore() if resume else None
        self._wrap()
        if resume and restored is None and list_checkpoints(self.checkpoints):
            raise CheckpointError(f"no readable checkpoint in {self.checkpoints} to resume from")
        if not resume and list_checkpoints(self.checkpoints):
            raise FileExistsError(
                f"run {self.run_name!r} already has checkpoints in {self.checkpoints}; "
                "resume it (resume=True / --resume), overwrite it (overwrite=True), or choose another run name"
            )
        if main:
            info = json.dumps(self._run_info(), indent=2).encode()
            atomic_write(self.reports / "config.json", lambda f: f.write(info))

        cfg = self.train_config
        model, optimizer = self.model, self.optimizer
        model.train()
        if self.progress and main:
            print(
                f"{self.run_name}: precision {self.precision} ({self.precision_reason}), device {self.device}"
                + (", torch.compile" if cfg.compile else "")
            )
        start = time.perf_counter()
        elapsed = self.elapsed_before
        last_log_time, last_log_tokens = elapsed, self.tokens
        last_checkpoint = restored
        val_loss = math.nan
        bar = tqdm(
            total=1000,
            desc=self.run_name,
            disable=not (self.progress and main),
            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
        )
        bar.update(int(1000 * self.budget.progress(self.step, elapsed)))
        last_step = math.inf if stop_after_steps is None else self.step + stop_after_steps
        try:
            while not self.budget.done(self.step, elapsed) and self.step < last_step:
                progress = self.budget.progress(self.step, elapsed)
                window = self.windows.window(progress)
                sequences = self.windows.batch_sequences(window, cfg.batch_size, cfg.batch_keep)
                lr = self.lr_schedule(self.step, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                log_now = (self.step + 1) % cfg.log_every == 0
                parts = torch.zeros(4)
                routing = None
                for micro in range(cfg.grad_accum_steps):
                    x, y = self.sampler.batch(sequences, window)
                    last_micro = micro == cfg.grad_accum_steps - 1
                    record = log_now and last_micro
                    forward = self.routing_model if record else self.step_model
                    # DDP averages gradients over ranks once, after the last micro-batch
                    sync = (
                        contextlib.nullcontext() if last_micro or not self.dist.enabled else self.step_model.no_sync()
                    )
                    with sync:
                        with autocast(self.precision, self.device):
                            out = forward(x.to(self.device), y.to(self.device), record_routing=record)
                        (out.loss / cfg.grad_accum_steps).backward()
                    parts += torch.stack([out.loss, out.ce_loss, out.aux_loss, out.z_loss]).detach().float().cpu()
                    routing = out.routing if record else routing
                parts /= cfg.grad_accum_steps
                if self.dist.enabled:  # the logged losses are means over all ranks
                    parts = (distributed.all_reduce(parts) / self.dist.world_size).float()
                if not torch.isfinite(parts[0]):
                    raise TrainingDiverged(
                        f"the loss became {parts[0].item()} at step {self.step + 1} (window {window}, lr {lr:.2e}). "
                        f"Training stopped; the last good checkpoint is {last_checkpoint or 'none (no checkpoint yet)'}. "
                        "Lower the learning rate, raise warmup_steps, or set grad_clip."
                    )
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                ).item()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens += sequences * window * cfg.grad_accum_steps
                elapsed = self.elapsed_before + time.perf_counter() - start
                if self.dist.enabled:  # one clock for the budget, or ranks would stop at different steps
                    elapsed = distributed.all_reduce(torch.tensor([elapsed]), "max").item()
                done = self.budget.done(self.step, elapsed)
                evaluate_now = self.step % cfg.eval_every == 0 or done

                if log_now or evaluate_now:
                    row = {
                        "step": self.step,
                        "tokens": self.tokens,
                        "elapsed_s": elapsed,
                        "progress": self.budget.progress(self.step, elapsed),
                        "window": window,
                        "batch_sequences": sequences,
                        "lr": lr,
                        "precision": self.precision,
                        "loss": parts[0].item(),
                        "ce_loss": parts[1].item(),
                        "aux_loss": parts[2].item(),
                        "z_loss": parts[3].item(),
                        "train_bpb": parts[1].item() / LN2,
                        "grad_norm": grad_norm,
                        "tokens_per_s": (self.tokens - last_log_tokens) / max(elapsed - last_log_time, 1e-9),
                        "val_loss": math.nan,
                        "val_bpb": math.nan,
                    }
                    last_log_time, last_log_tokens = elapsed, self.tokens
                    if routing is not None and self.model_config.is_moe:
                        row.update(_load_columns(routing, self.model_config.n_experts))
                    if evaluate_now:
                        eval_start = time.perf_counter()
                        val_loss = mean_loss(model, self.val_x, self.val_y, cfg.batch_size, self.device)
                        row["val_loss"], row["val_bpb"] = val_loss, val_loss / LN2
                        if main:
                            self._routing_snapshot()
                        start += time.perf_counter() - eval_start  # evaluation time is not training time
                    self.rows.append(row)
                    for callback in self.callbacks if main else ():
                        callback(row)
                    bar.set_postfix(
                        step=self.step,
                        loss=f"{row['loss']:.3f}",
                        bpb=f"{val_loss / LN2:.3f}" if not math.isnan(val_loss) else "-",
                        window=window,
                        tok_s=f"{row['tokens_per_s']:.0f}",
                        refresh=False,
                    )
                if self.step % cfg.checkpoint_every == 0 or done or self.step == last_step:
                    last_checkpoint = self._save(elapsed)
                bar.update(int(1000 * self.budget.progress(self.step, elapsed)) - bar.n)
        finally:
            bar.close()
            self._write_metrics()

        if last_checkpoint is None:  # resumed a run whose budget was already spent
            last_checkpoint = latest_checkpoint(self.checkpoints)
        distributed.barrier()
        if math.isnan(val_loss):
            val_loss = mean_loss(model, self.val_x, self.val_y, cfg.batch_size, self.device)
        return TrainResult(
            self.run_name, self.step, self.tokens, elapsed, val_loss, val_loss / LN2, last_checkpoint, self.metrics()
        )

    def _check_world_size(self) -> None:
        """Every batch of the window schedule must split evenly over the ranks."""
        world = self.dist.world_size
        cfg = self.train_config
        uneven = [
            w for w in self.windows.windows if self.windows.batch_sequences(w, cfg.batch_size, cfg.batch_keep) % world
        ]
        if uneven:
            raise ValueError(
                f"batch_size: with {world} processes every batch must split evenly, but at window(s) {uneven} "
                f"the batch has {[self.windows.batch_sequences(w, cfg.batch_size, cfg.batch_keep) for w in uneven]} "
                f"sequences; choose a batch_size that makes them multiples of {world} (batch_size is the global batch)"
            )

    def _prepare_folders(self) -> None:
        """Fail before training, not after an hour, when the output folders cannot be written.

        Also removes temporary files a killed process left behind (never taken as checkpoints).
        """
        for folder in (self.checkpoints, self.reports):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder) as probe:
                    probe.write(b"moelab write check")
                    probe.flush()
                    os.fsync(probe.fileno())
            except OSError as err:
                raise OSError(
                    err.errno,
                    f"cannot write to {folder} ({err.strerror or err}); free disk space or point "
                    "MOELAB_DATA_DIR / MOELAB_REPORTS_DIR at a writable folder. Nothing was trained or changed",
                ) from err
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ records
    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    @torch.no_grad()
    def _routing_snapshot(self) -> None:
        """Per-layer expert load and mean router probability on the first validation windows."""
        if not self.model_config.is_moe:
            return
        n = min(len(self.val_x), self.train_config.batch_size)
        with eval_mode(self.model):
            out = self.model(self.val_x[:n].to(self.device), record_routing=True)
        for layer, record in enumerate(out.routing):
            load = expert_load(record.experts, self.model_config.n_experts)
            importance = record.probs.reshape(-1, self.model_config.n_experts).mean(0)
            for expert in range(self.model_config.n_experts):
                self.routing_rows.append(
                    {
                        "step": self.step,
                        "layer": layer,
                        "expert": expert,
                        "load": load[expert].item(),
                        "importance": importance[expert].item(),
                    }
                )

    def _write_metrics(self) -> None:
        if not self.dist.is_main:
            return
        try:
            if self.rows:
                atomic_write(self.reports / "metrics.parquet", lambda f: self.metrics().to_parquet(f, index=False))
            if self.routing_rows:
                routing = pd.DataFrame(self.routing_rows)
                atomic_write(self.reports / "routing.parquet", lambda f: routing.to_parquet(f, index=False))
        except OSError as err:
            raise OSError(
                err.errno,
                f"could not write the metrics of {self.run_name} to {self.reports} ({err.strerror or err}); "
                "the files there are the previous complete versions. Free disk space and resume",
            ) from err

    def _save(self, elapsed: float) -> Path:
        """Rank 0 writes metrics then the checkpoint (with every rank's RNG state); all ranks wait for it."""
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        rng = {"cpu": torch.get_rng_state(), "cuda": cuda_rng}
        rng_ranks = distributed.all_gather_object(rng)
        path = self.checkpoints / f"ckpt_{self.step:07d}.pt"
        if not self.dist.is_main:
            distributed.barrier()
            return path
        extra = {
            "tokens": self.tokens,
            "elapsed_s": elapsed,
            "sampler": self.sampler.state_dict(),
            "rng_cpu": rng["cpu"],
            "rng_cuda": rng["cuda"],
            "rng_ranks": rng_ranks,
            "world_size": self.dist.world_size,
            "run_name": self.run_name,
            "dataset": self.dataset,
        }
        try:
            self._save_files(path, extra)
        finally:
            distributed.barrier()
        return path

    def _save_files(self, path: Path, extra: dict) -> None:
        # metrics first: a kill between the two writes leaves metrics ahead of the latest
        # checkpoint (resume drops those rows and redoes the steps), never behind it
        self._write_metrics()
        save_checkpoint(
            path,
            self.model,
            train_config=self.train_config,
            optimizer=self.optimizer,
            step=self.step,
            extra=extra,
        )
        for old in list_checkpoints(self.checkpoints)[: -self.train_config.keep_checkpoints]:
            old.unlink(missing_ok=True)

    def _run_info(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "dataset": self.dataset,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "torch": str(torch.__version__),
            "model": self.model_config.to_dict(),
            "train": self.train_config.to_dict(),
            "params": self.model_config.param_counts(),
        }


def _load_columns(routing, n_experts: int) -> dict[str, float]:
    """Share of routed token slots per expert, per layer: columns load_l{layer}_e{expert}."""
    columns = {}
    for layer, record in enumerate(routing):
        for expert, share in enumerate(expert_load(record.experts, n_experts).tolist()):
            columns[f"load_l{layer}_e{expert}"] = share
    return columns


# ============================================================================ command line


def parse_value(text: str) -> Any:
    """A --set value: int, float, bool, null, or a YAML list; else the string."""
    import yaml

    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    value = yaml.safe_load(text)
    return value if value is not None or text.lower() in ("null", "none", "~") else text


def build_configs(preset_name: str, overrides: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """A preset with overrides; each field goes to ModelConfig or TrainConfig by its name."""
    chosen = preset(preset_name)
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} | {"num_embeds"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} | set(TrainConfig.ALIASES)
    unknown = sorted(set(overrides) - model_fields - train_fields)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}. Model fields: {', '.join(sorted(model_fields))}. "
            f"Training fields: {', '.join(sorted(train_fields))}."
        )
    model_changes = {k: v for k, v in overrides.items() if k in model_fields}
    train_changes = {k: v for k, v in overrides.items() if k in train_fields}
    if "num_embeds" in model_changes:
        model_changes["n_embd"] = model_changes.pop("num_embeds")
    model = chosen.model.replace(**model_changes)
    train = TrainConfig.from_dict({**chosen.train.to_dict(), **train_changes})
    train.check_against(model)
    return model, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moelab.train", description="Train a moelab model.")
    parser.add_argument("--preset", default="cpu", help="seed, cpu, long or tiny (default: cpu, 10 minutes)")
    parser.add_argument("--run-name", required=True, help="names data/checkpoints/<run>/ and reports/<run>/")
    parser.add_argument("--dataset", default="machado", help="a prepared dataset under data/processed/")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run's checkpoints and metrics first")
    parser.add_argument("--config", type=Path, help="a YAML file of field: value overrides")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override one field (repeatable)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="N",
        help="end this session after N steps with a checkpoint (the budget stays the run's; --resume continues)",
    )
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            parser.error(f"{args.config} must hold a mapping of field: value")
        overrides.update(loaded)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[field.strip()] = parse_value(value.strip())
    try:
        model_config, train_config = build_configs(args.preset, overrides)
        trainer = Trainer(
            model_config,
            train_config,
            args.run_name,
            dataset=args.dataset,
            device=args.device,
            progress=not args.no_progress,
        )
        result = trainer.fit(resume=args.resume, overwrite=args.overwrite, stop_after_steps=args.stop_after_steps)
    except (ValueError, OSError, CheckpointError, CorpusError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    if trainer.dist.is_main:
        print(
            f"{result.run_name}: {result.steps} steps, {result.tokens:,} tokens in {result.elapsed_s / 60:.1f} min "
            f"on {trainer.dist.world_size} process(es); val {result.val_loss:.4f} nats = {result.val_bpb:.4f} "
            f"bits/byte; checkpoint {result.checkpoint}"
        )
    return 0


def result_from_files(run_name: str) -> TrainResult:
    """A finished run's TrainResult, read back from its metrics and checkpoints (e.g. after torchrun)."""
    metrics = pd.read_parquet(run_reports_dir(run_name) / "metrics.parquet")
    last = metrics.iloc[-1]
    evaluated = metrics.dropna(subset=["val_loss"])
    val_loss = float(evaluated["val_loss"].iloc[-1]) if len(evaluated) else math.nan
    return TrainResult(
        run_name,
        int(last["step"]),
        int(last["tokens"]),
        float(last["elapsed_s"]),
        val_loss,
        val_loss / LN2,
        latest_checkpoint(run_name),
        metrics,
    )


if __name__ == "__main__":
    sys.exit(main())


# ============================================================================ comparisons


def comparison_variants(model: ModelConfig, train: TrainConfig) -> dict[str, tuple[ModelConfig, TrainConfig]]:
    """The three runs notebook 02 compares at one budget: the schedule, a fixed window, a dense model."""
    return {
        "MoE, window schedule": (model, train),
        "MoE, fixed window": (model, train.replace(current_context_window=model.context_window)),
        "dense, same active parameters": (model.dense_equivalent(), train),
    }


def run_comparison(
    variants: dict[str, tuple[ModelConfig, TrainConfig]],
    run_prefix: str,
    *,
    dataset: str = "machado",
    max_minutes: float | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Train each variant with the same budget (runs ``<run_prefix>-<n>``, overwritten each time).

    Returns a results table (one row per variant) and each run's metrics.
    """
    rows, curves = [], {}
    for number, (name, (model, train)) in enumerate(variants.items(), start=1):
        budgeted = train.replace(max_minutes=max_minutes, max_steps=max_steps)
        trainer = Trainer(model, budgeted, f"{run_prefix}-{number}", dataset=dataset, progress=progress)
        result = trainer.fit(overwrite=True)
        counts = model.param_counts()
        rows.append(
            {
                "variant": name,
                "run": trainer.run_name,
                "steps": result.steps,
                "tokens (M)": result.tokens / 1e6,
                "minutes": result.elapsed_s / 60,
                "tokens/s": result.tokens / max(result.elapsed_s, 1e-9),
                "params total": counts["total"],
                "params active": counts["active"],
                "val_bpb": result.val_bpb,
            }
        )
        curves[name] = result.metrics
    return pd.DataFrame(rows).set_index("variant"), curves
