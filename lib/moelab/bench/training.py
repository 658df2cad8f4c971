"""Training-step measurements: tokens/s and FLOP/s of moelab, naive and dense steps, MFU, peak memory."""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
from collections.abc import Callable

import torch

from moelab.bench.baseline import NaiveTransformer
from moelab.bench.configs import CONFIGS, BenchConfig
from moelab.bench.flops import mfu, train_flops_per_token
from moelab.bench.table import table_row
from moelab.nn.model import Transformer
from moelab.nn.moe.experts import Experts
from moelab.timing import interleaved, paired_ratio
from moelab.train.cuda_graph import GraphedStep
from moelab.train.step import TrainStep


# ============================================================================ models


def build(kind: str, bench: BenchConfig, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """``moelab``, ``moelab unbucketed`` (the expert blocks as they come in every dtype, not
    padded as :data:`moelab.nn.moe.experts.ROW_BUCKETS` says), ``naive`` (same weights as ``moelab``) or
    ``dense`` (same active parameters)."""
    torch.manual_seed(seed)
    config = bench.model_config()
    if kind == "dense":
        return Transformer(config.dense_equivalent()).to(device)
    model = Transformer(config).to(device)
    if kind == "naive":
        return NaiveTransformer.from_model(model)
    if kind == "moelab unbucketed":
        for experts in (m for m in model.modules() if isinstance(m, Experts)):
            experts.row_bucket = 1
    return model


def training_step(
    model: torch.nn.Module, kind: str, precision: str, device: torch.device, batch: list
) -> Callable[[], float]:
    """``batch``: a list of (x, y) batches, each step takes the next (``… graphed``: the first only).

    One optimizer step as the Trainer takes it (:class:`moelab.train.step.TrainStep`, fused AdamW,
    clipping at 1.0); naive: the seed's loop with default AdamW; ``… graphed``: replayed from a CUDA
    graph, :mod:`moelab.train.cuda_graph`, after one eager step."""
    if kind.endswith("graphed"):
        eager = training_step(model, kind.split()[0], precision, device, batch[:1])
        eager()  # creates the optimizer state the graph updates
        graphed = GraphedStep(eager.train_step)
        x, y = (t.cpu() for t in batch[0])
        return lambda: graphed.step(x, y, 1e-4).parts[0]
    model.train()
    if kind == "naive":
        return naive_training_step(model, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    train_step = TrainStep(model, optimizer, grad_clip=1.0, precision=precision)
    taken = itertools.count()

    def step() -> torch.Tensor:  # a new batch each step, as in training: the experts' loads change
        return train_step([batch[next(taken) % len(batch)]]).parts[0]

    step.train_step = train_step
    return step


def naive_training_step(model: torch.nn.Module, batches) -> Callable[[], torch.Tensor]:
    """The seed repository's step: default AdamW, the loss its model returns, clipping at 1.0, fp32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    taken = itertools.count()

    def step() -> torch.Tensor:
        x, y = batches[next(taken) % len(batches)]
        loss = model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def random_batch(bench: BenchConfig, device: torch.device, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (bench.batch, bench.window + 1), generator=generator).to(device)
    return data[:, :-1], data[:, 1:]


BATCHES = 8  # a step takes the next of these: every step routes other tokens, as in training


def random_batches(bench: BenchConfig, device: torch.device, n: int = BATCHES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [random_batch(bench, device, seed=1 + i) for i in range(n)]


# ============================================================================ measures


def bench_training(
    bench: BenchConfig, device: torch.device, precisions: list[str], repeats: int, inner: int
) -> list[dict]:
    batch = random_batches(bench, device)
    kinds = ("moelab", "moelab unbucketed", "dense") if device.type == "cpu" else ("moelab", "dense")
    variants = [("naive", "fp32")] + [(kind, p) for p in precisions for kind in kinds]
    if device.type == "cuda" and "bf16" in precisions:
        variants += [("moelab graphed", "bf16"), ("dense graphed", "bf16")]
    steps = {
        f"{kind} {p}": training_step(build(kind.removesuffix(" graphed"), bench, device), kind, p, device, batch)
        for kind, p in variants
    }
    times = interleaved(steps, repeats, inner, device)
    tokens = bench.batch * bench.window
    flops = train_flops_per_token(bench.model_config(), bench.window) * tokens
    dense_flops = train_flops_per_token(bench.model_config().dense_equivalent(), bench.window) * tokens
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows.append(table_row(bench, f"train tok/s {name}", tokens / median, "tok/s"))
        step_flops = dense_flops if name.startswith("dense") else flops
        rows.append(table_row(bench, f"train GFLOP/s {name}", step_flops / median / 1e9, "GFLOP/s"))
    for p in precisions:
        speedup = paired_ratio(times["naive fp32"], times[f"moelab {p}"])
        rows.append(table_row(bench, f"train speedup {p} vs naive" + (" fp32" if p != "fp32" else ""), speedup, "×"))
        rows.append(table_row(bench, f"MoE overhead {p}", paired_ratio(times[f"moelab {p}"], times[f"dense {p}"]), "×"))
        if f"moelab unbucketed {p}" in times:  # expert rows padded by ROW_BUCKETS against as they come
            ratio = paired_ratio(times[f"moelab unbucketed {p}"], times[f"moelab {p}"])
            rows.append(table_row(bench, f"train speedup {p}, expert rows bucketed vs not", ratio, "×"))
    if "moelab bf16" in times:  # the precision's own gain, moelab against itself
        rows.append(table_row(bench, "train speedup bf16 vs fp32", paired_ratio(times["moelab fp32"], times["moelab bf16"]), "×"))
    if "moelab unbucketed bf16" in times:
        ratio = paired_ratio(times["moelab unbucketed fp32"], times["moelab unbucketed bf16"])
        rows.append(table_row(bench, "train speedup bf16 vs fp32, expert rows not bucketed", ratio, "×"))
    if "moelab graphed bf16" in times:
        ratio = paired_ratio(times["moelab graphed bf16"], times["dense graphed bf16"])
        rows.append(table_row(bench, "MoE overhead bf16, CUDA graphs", ratio, "×"))
        speedup = paired_ratio(times["moelab bf16"], times["moelab graphed bf16"])
        rows.append(table_row(bench, "CUDA graphs speedup, moelab bf16", speedup, "×"))
    return rows


def bench_memory(bench: BenchConfig, device: torch.device, precisions: list[str]) -> list[dict]:
    """Peak memory of a training step per variant, each measured in a fresh process (CPU) or by CUDA's counter."""
    rows = []
    variants = [("naive", "fp32")] + [(kind, p) for p in precisions for kind in ("moelab", "dense")]
    for kind, p in variants:
        if device.type == "cuda":
            peak = _step_memory(bench.name, kind, p, str(device))
        else:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                peak = pool.apply(_step_memory, (bench.name, kind, p, "cpu"))
        rows.append(table_row(bench, f"train peak MiB {kind} {p}", peak / 2**20, "MiB"))
    return rows


def _step_memory(config_name: str, kind: str, precision: str, device_name: str) -> int:
    """Bytes a training step adds at its peak (gradients, optimizer state, activations)."""
    device = torch.device(device_name)
    bench = CONFIGS[config_name]
    model = build(kind, bench, device)
    step = training_step(model, kind, precision, device, random_batches(bench, device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _reset_peak_rss()
    before = _status_bytes("VmRSS")
    for _ in range(2):
        step()
    return _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status; peak memory is measured on Linux only")


def _reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def mfu_rows(bench: BenchConfig, trained: list[dict], peaks: dict[str, float]) -> list[dict]:
    """Achieved FLOP/s of moelab's step over the matmul peak measured here (FLOP/s by precision)."""
    rows = []
    for row in trained:
        for p, peak in peaks.items():
            if row["measure"] == f"train GFLOP/s moelab {p}":
                rows.append(table_row(bench, f"MFU {p}", row["value"] * 1e9 / peak, "fraction"))
    return rows


def gpu_rows(
    bench: BenchConfig, trained: list[dict], rated: tuple[str, float] | None, measured_bf16: float | None
) -> list[dict]:
    """The MFU of moelab's bf16 step against the card's rated peak (or, unknown card, the measured bf16 peak)."""
    rows = []
    flops = train_flops_per_token(bench.model_config(), bench.window)
    for row in trained:
        if row["measure"] not in ("train tok/s moelab bf16", "train tok/s moelab graphed bf16"):
            continue
        graphs = ", CUDA graphs" if "graphed" in row["measure"] else ""
        if rated is not None:
            measure, peak = f"MFU bf16 vs rated peak ({rated[0]}){graphs}", rated[1]
        elif measured_bf16:
            measure, peak = f"MFU bf16 vs measured peak (card not in the table){graphs}", measured_bf16
        else:
            continue
        rows.append(table_row(bench, measure, mfu(row["value"], flops, peak), "fraction"))
    return rows
