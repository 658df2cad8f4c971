"""The performance benchmark: ``python -m moelab.bench`` (``make bench``).

Everything is measured side by side in one process with interleaved repeats (A B A B …),
so machine noise hits every variant alike; the table holds medians and the medians of
the paired ratios. It measures, for the named configs A, B, C:

1. training-step tokens/s (forward + backward + clip + optimizer step) of moelab's model
   against the naive baseline of the same architecture (:mod:`moelab.bench.baseline`: one
   module per head and per expert, boolean-mask dispatch: the seed's approach), with
   identical weights;
2. MoE overhead: the MoE step time over a dense model with the same active parameters;
3. achieved FLOP/s as a fraction of this machine's matmul peak, both measured here with
   the same dtype and thread count (formula in :func:`moelab.bench.flops.train_flops_per_token`);
4. generation tokens/s at batch 1 and 8 for windows 128 and 256 with the KV cache, against
   full recomputation, and whether both produce the same tokens;
5. peak memory of a training step;
6. the same in bf16 where the hardware has native bf16 (see :mod:`moelab.train.precision`), and
   bf16's own speedup over fp32.

The table's target and meets columns hold the goals of :data:`moelab.bench.configs.TARGETS` on a CPU (issue 17's,
per config; the bf16 goal only with AMX) and of :data:`moelab.bench.configs.GPU_TARGETS` on CUDA. ``tools/cpu_profile.py`` shows where the
time goes when a goal is missed.

On CUDA (``--device cuda``) it also names the card and reports the MFU against the card's
rated dense bf16 peak (:data:`moelab.bench.flops.RATED_BF16_PEAKS`; an unknown card falls back to the bf16
matmul peak measured here, and says so), with the GPU's targets (:data:`moelab.bench.configs.GPU_TARGETS`).
``--configs seed`` adds the ``seed`` preset's model (6 layers × 1028, 8 experts top-2 + 2
common, batch 64 × 32 bytes) to A, B, C; ``seed-32k`` and ``seed-64k`` feed the same model 32K
and 64K tokens a step.

Results go to ``reports/benchmarks/`` (bench.csv, bench.md, bench.png).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import pandas as pd
import torch

from moelab.bench.configs import CONFIGS, DEFAULT_CONFIGS, GPU_TARGETS, TARGETS
from moelab.bench.flops import rated_bf16_peak
from moelab.bench.generation import bench_generation, bench_sampling
from moelab.bench.table import apply_targets, table_row, write_table
from moelab.bench.training import bench_memory, bench_training, gpu_rows, mfu_rows
from moelab.device import device_name, resolve_device
from moelab.paths import reports_dir
from moelab.timing import matmul_peak
from moelab.train.precision import bf16_support


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moelab bench", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS),
        help="A B C (the default); cpu: the cpu preset's model; seed, seed-32k, seed-64k: the seed preset's "
        "model at 2K, 32K and 64K tokens a step (for GPUs)")
    add("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    add("--steps", type=int, default=3, help="training steps per round and variant (default 3)")
    add("--threads", type=int, default=None, help="torch threads for training (default: torch's choice)")
    add("--precision", choices=["auto", "fp32", "bf16"], default="auto",
        help="auto: fp32, plus bf16 where the hardware has native bf16")
    add("--generation-config", default="B", choices=list(CONFIGS))
    add("--generation-threads", type=int, default=1, help="threads for generation (default 1)")
    add("--new-tokens", type=int, default=None, help="tokens to generate (default: up to the window)")
    add("--sampling-bytes", type=int, default=300, help="bytes the cpu model writes past its window (default 300)")
    add("--generation-repeats", type=int, default=2, help="rounds of generation (default 2: recomputation is slow)")
    add("--skip", nargs="*", default=[], choices=["train", "memory", "generation", "peak"])
    add("--out", default=None, help="output folder (default reports/benchmarks)")
    add("--device", default="auto", help="auto (CUDA when present, else the CPU; the default), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    for name in ("repeats", "steps", "generation_threads", "generation_repeats", "sampling_bytes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    precisions, why = choose_precisions(args.precision, device)
    print(f"moelab bench · torch {torch.__version__} · {device} · {threads} threads · bf16: {why}")
    rated = announce_card(device)
    print(f"precisions: {', '.join(precisions)}; {args.repeats} interleaved rounds × {args.steps} steps\n", flush=True)

    rows, peaks = measure_peaks(device, precisions) if "peak" not in args.skip else ([], {})
    rows += measure_configs(args, precisions, peaks, rated)
    generation_rows = measure_generation(args) if "generation" not in args.skip else []  # on --generation-threads

    table = pd.DataFrame(rows + generation_rows)
    amx = device.type == "cpu" and torch.cpu._is_amx_tile_supported()
    table = apply_targets(table, GPU_TARGETS if device.type == "cuda" else TARGETS, amx)
    table.insert(1, "threads", [threads] * len(rows) + [args.generation_threads] * len(generation_rows))
    write_table(table, reports_dir() / "benchmarks" if args.out is None else Path(args.out))
    return 0


def choose_precisions(requested: str, device: torch.device) -> tuple[list[str], str]:
    """The precisions to measure (auto: fp32, plus bf16 where the hardware has native bf16) and
    the reason bf16 is or is not native here."""
    has_bf16, _, why = bf16_support(device)
    precisions = {"fp32": ["fp32"], "bf16": ["bf16"], "auto": ["fp32", "bf16"] if has_bf16 else ["fp32"]}
    return precisions[requested], why


def announce_card(device: torch.device) -> tuple[str, float] | None:
    """On CUDA, print the card and return its rated dense bf16 peak (None: a card not in the table, or a CPU)."""
    if device.type != "cuda":
        return None
    name = device_name(device)
    rated = rated_bf16_peak(name)
    if rated:
        print(f"GPU: {name} = {rated[0]}, rated dense bf16 peak {rated[1] / 1e12:.0f} TFLOP/s")
    else:
        print(f"GPU: {name}: not in the table of rated peaks; MFU is against the bf16 matmul peak measured here")
    return rated


def measure_peaks(device: torch.device, precisions: list[str]) -> tuple[list[dict], dict[str, float]]:
    """This machine's matmul peak per precision: its rows, and the peaks (FLOP/s) the MFU is taken against."""
    rows, peaks = [], {}
    for p in precisions:
        peaks[p] = matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, device)
        rows.append(table_row(None, f"matmul peak GFLOP/s {p}", peaks[p] / 1e9, "GFLOP/s"))
        print(f"matmul peak {p}: {peaks[p] / 1e9:.0f} GFLOP/s", flush=True)
    return rows, peaks


def measure_configs(
    args: argparse.Namespace, precisions: list[str], peaks: dict[str, float], rated: tuple[str, float] | None
) -> list[dict]:
    """Training steps (with their MFU) and peak memory of every config in ``--configs``."""
    rows: list[dict] = []
    for name in args.configs:
        bench = CONFIGS[name]
        if "train" not in args.skip:
            print(f"config {name}: training steps …", flush=True)
            trained = bench_training(bench, args.device, precisions, args.repeats, args.steps)
            rows += trained + mfu_rows(bench, trained, peaks)  # achieved FLOP/s over the measured peak
            if args.device.type == "cuda":
                rows += gpu_rows(bench, trained, rated, peaks.get("bf16"))
        if "memory" not in args.skip:
            print(f"config {name}: peak memory …", flush=True)
            rows += bench_memory(bench, args.device, precisions)
    return rows


def measure_generation(args: argparse.Namespace) -> list[dict]:
    """Generation (``--generation-config``) and sampling past the window, on ``--generation-threads``."""
    print(f"generation (config {args.generation_config}, {args.generation_threads} thread(s)) …", flush=True)
    with _threads(args.generation_threads):
        rows = bench_generation(
            CONFIGS[args.generation_config], args.device, [128, 256], [1, 8], args.generation_repeats, args.new_tokens
        )
        rows += bench_sampling(args.device, args.generation_repeats, args.sampling_bytes)
    return rows


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
