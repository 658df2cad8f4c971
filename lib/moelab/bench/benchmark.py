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
   the same dtype and thread count (formula in :func:`train_flops_per_token`);
4. generation tokens/s at batch 1 and 8 for windows 128 and 256 with the KV cache, against
   full recomputation, and whether both produce the same tokens;
5. peak memory of a training step;
6. the same in bf16 where the hardware has native bf16 (see :mod:`moelab.train.precision`), and
   bf16's own speedup over fp32.

The table's target and meets columns hold the goals of :data:`TARGETS` on a CPU (issue 17's,
per config; the bf16 goal only with AMX) and of :data:`GPU_TARGETS` on CUDA. ``tools/cpu_profile.py`` shows where the
time goes when a goal is missed.

On CUDA (``--device cuda``) it also names the card and reports the MFU against the card's
rated dense bf16 peak (:data:`moelab.bench.flops.RATED_BF16_PEAKS`; an unknown card falls back to the bf16
matmul peak measured here, and says so), with the GPU's targets (:data:`GPU_TARGETS`).
``--configs seed`` adds the ``seed`` preset's model (6 layers × 1028, 8 experts top-2 + 2
common, batch 64 × 32 bytes) to A, B, C.

Results go to ``reports/benchmarks/`` (bench.csv, bench.md, bench.png).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from moelab.bench.baseline import NaiveTransformer
from moelab.config.model import ModelConfig
from moelab.train.cuda_graph import GraphedStep
from moelab.train.step import TrainStep
from moelab.bench.flops import mfu, rated_bf16_peak, train_flops_per_token
from moelab.nn.model import Transformer
from moelab.paths import reports_dir
from moelab.train.precision import bf16_support
from moelab.device import device_name, resolve_device
from moelab.timing import interleaved, matmul_peak, paired_ratio
from moelab.generate.loop import generate


@dataclass(frozen=True)
class BenchConfig:
    name: str
    n_embd: int
    n_layers: int
    n_heads: int
    window: int
    batch: int
    n_experts: int = 8
    top_k: int = 2
    n_common_experts: int = 0

    def model_config(self, context_window: int | None = None) -> ModelConfig:
        shape = dict(n_layers=self.n_layers, n_heads=self.n_heads, n_embd=self.n_embd)
        experts = dict(n_experts=self.n_experts, top_k=self.top_k, n_common_experts=self.n_common_experts)
        window = context_window or self.window
        return ModelConfig(vocab_size=256, context_window=window, pos_encoding="learned", dropout=0.0, **shape, **experts)


CONFIGS = {
    "A": BenchConfig("A", n_embd=128, n_layers=4, n_heads=4, window=64, batch=32),
    "B": BenchConfig("B", n_embd=256, n_layers=6, n_heads=4, window=128, batch=16),
    "C": BenchConfig("C", n_embd=128, n_layers=4, n_heads=4, window=64, batch=32, n_common_experts=2),
    # the seed preset's model at its full window (dropout off, as in every config here); for GPUs
    "seed": BenchConfig("seed", n_embd=1028, n_layers=6, n_heads=4, window=32, batch=64, n_common_experts=2),
}
DEFAULT_CONFIGS = ["A", "B", "C"]

@dataclass(frozen=True)
class Target:
    """A goal for the table's rows whose measure starts with ``measure``: value ``op`` (">=" or
    "<=") ``value``; for the listed configs only (None: every row, "-" included), and with
    ``amx_only`` only on a CPU with AMX tiles (a bf16 goal that assumes bf16 matrix units)."""

    measure: str
    op: str
    value: float
    configs: tuple[str, ...] | None = None
    amx_only: bool = False

    def applies(self, config: str, measure: str, amx: bool) -> bool:
        wanted = self.configs is None or config in self.configs
        return measure.startswith(self.measure) and wanted and (amx or not self.amx_only)

    def met(self, value: float) -> bool:
        return value >= self.value if self.op == ">=" else value <= self.value


# The CPU issue's targets (issue 17), and issue 8's speedup over the naive model; checked on a CPU.
TARGETS = (
    Target("train speedup fp32 vs naive", ">=", 1.3),
    Target("MoE overhead fp32", "<=", 1.10, ("A", "B")),
    Target("MFU fp32", ">=", 0.60, ("A",)),
    Target("MFU fp32", ">=", 0.75, ("B",)),
    Target("train speedup bf16 vs fp32", ">=", 2.5, ("B",), amx_only=True),
    Target("generation tok/s (KV cache) window 256 batch 1", ">=", 400.0, ("B",)),
    Target("sampling B/s past the window (slide)", ">=", 1500.0),
)

# The GPU issue's targets (issue 18), checked on CUDA only.
GPU_TARGETS = (
    Target("MFU bf16 vs rated peak", ">=", 0.40),
    Target("MoE overhead bf16", "<=", 1.15),
)


# ============================================================================ models


def build(kind: str, bench: BenchConfig, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """``moelab``, ``naive`` (same weights as ``moelab``) or ``dense`` (same active parameters)."""
    torch.manual_seed(seed)
    config = bench.model_config()
    if kind == "dense":
        return Transformer(config.dense_equivalent()).to(device)
    model = Transformer(config).to(device)
    if kind == "naive":
        return NaiveTransformer.from_model(model)
    return model


def training_step(
    model: torch.nn.Module, kind: str, precision: str, device: torch.device, batch
) -> Callable[[], float]:
    """One optimizer step as the Trainer takes it (:class:`moelab.train.step.TrainStep`, fused AdamW,
    clipping at 1.0); naive: the seed's loop with default AdamW; ``… graphed``: replayed from a CUDA
    graph, :mod:`moelab.train.cuda_graph`, after one eager step."""
    if kind.endswith("graphed"):
        eager = training_step(model, kind.split()[0], precision, device, batch)
        eager()  # creates the optimizer state the graph updates
        graphed = GraphedStep(eager.train_step)
        x, y = (t.cpu() for t in batch)
        return lambda: graphed.step(x, y, 1e-4).parts[0]
    model.train()
    if kind == "naive":
        return naive_training_step(model, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    train_step = TrainStep(model, optimizer, grad_clip=1.0, precision=precision)

    def step() -> torch.Tensor:
        return train_step([batch]).parts[0]

    step.train_step = train_step
    return step


def naive_training_step(model: torch.nn.Module, batch) -> Callable[[], torch.Tensor]:
    """The seed repository's step: default AdamW, the loss its model returns, clipping at 1.0, fp32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = batch

    def step() -> torch.Tensor:
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


# ============================================================================ measures


def bench_training(
    bench: BenchConfig, device: torch.device, precisions: list[str], repeats: int, inner: int
) -> list[dict]:
    batch = random_batch(bench, device)
    variants = [("naive", "fp32")] + [(kind, p) for p in precisions for kind in ("moelab", "dense")]
    if device.type == "cuda" and "bf16" in precisions:
        variants += [("moelab graphed", "bf16"), ("dense graphed", "bf16")]
    steps = {
        f"{kind} {p}": training_step(build(kind.split()[0], bench, device), kind, p, device, batch)
        for kind, p in variants
    }
    times = interleaved(steps, repeats, inner, device)
    tokens = bench.batch * bench.window
    flops = train_flops_per_token(bench.model_config(), bench.window) * tokens
    dense_flops = train_flops_per_token(bench.model_config().dense_equivalent(), bench.window) * tokens
    rows = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows.append(_row(bench, f"train tok/s {name}", tokens / median, "tok/s"))
        step_flops = dense_flops if name.startswith("dense") else flops
        rows.append(_row(bench, f"train GFLOP/s {name}", step_flops / median / 1e9, "GFLOP/s"))
    for p in precisions:
        speedup = paired_ratio(times["naive fp32"], times[f"moelab {p}"])
        rows.append(_row(bench, f"train speedup {p} vs naive" + (" fp32" if p != "fp32" else ""), speedup, "×"))
        rows.append(_row(bench, f"MoE overhead {p}", paired_ratio(times[f"moelab {p}"], times[f"dense {p}"]), "×"))
    if "moelab bf16" in times:  # the precision's own gain, moelab against itself
        rows.append(_row(bench, "train speedup bf16 vs fp32", paired_ratio(times["moelab fp32"], times["moelab bf16"]), "×"))
    if "moelab graphed bf16" in times:
        ratio = paired_ratio(times["moelab graphed bf16"], times["dense graphed bf16"])
        rows.append(_row(bench, "MoE overhead bf16, CUDA graphs", ratio, "×"))
        speedup = paired_ratio(times["moelab bf16"], times["moelab graphed bf16"])
        rows.append(_row(bench, "CUDA graphs speedup, moelab bf16", speedup, "×"))
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
        rows.append(_row(bench, f"train peak MiB {kind} {p}", peak / 2**20, "MiB"))
    return rows


def _step_memory(config_name: str, kind: str, precision: str, device_name: str) -> int:
    """Bytes a training step adds at its peak (gradients, optimizer state, activations)."""
    device = torch.device(device_name)
    bench = CONFIGS[config_name]
    model = build(kind, bench, device)
    step = training_step(model, kind, precision, device, random_batch(bench, device))
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


def bench_generation(
    bench: BenchConfig,
    device: torch.device,
    windows: list[int],
    batches: list[int],
    repeats: int,
    new_tokens: int | None,
) -> list[dict]:
    """Greedy generation from a 16-byte prompt up to the window, with and without the KV cache.

    Full recomputation is quadratic in the window (minutes at window 256, batch 8), so
    these rounds are few; both variants still alternate. On a CPU, batch-1 decoding is set
    against its weight-read bound: the weight bytes a token reads
    (:func:`decode_bytes_per_token`) at the bandwidth of single-row products (:func:`gemv_bandwidth`).
    """
    rows, bandwidth = [], None
    if device.type == "cpu":
        gemv = gemv_bandwidth()
        bandwidth = gemv["bytes_per_s"]
        rows.append(_row(bench, "GEMV weight bandwidth GB/s (x·W, 64 MiB fp32)", bandwidth / 1e9, "GB/s"))
        rows.append(_row(bench, "GEMV time, nn.Linear layout (x·Wᵀ) / x·W", gemv["linear_over_xw"], "×"))
    for window in windows:
        torch.manual_seed(0)
        model = Transformer(bench.model_config(context_window=window)).to(device).eval()
        rows.append(_row(bench, f"decode weight MB per token window {window}", decode_bytes_per_token(model) / 1e6, "MB"))
        count = new_tokens or window - 16
        for batch in batches:
            prompt = torch.randint(0, 256, (batch, 16), generator=torch.Generator().manual_seed(2)).to(device)
            generate(model, prompt, 4, temperature=0.0)  # warm up
            outputs = {}

            def run(use_cache: bool, model=model, prompt=prompt, count=count, outputs=outputs) -> None:
                outputs[use_cache] = generate(model, prompt, count, temperature=0.0, use_cache=use_cache)

            variants = {"cache": lambda run=run: run(True), "recompute": lambda run=run: run(False)}
            times = interleaved(variants, repeats, 1, device, warmup=0)
            label = f"window {window} batch {batch}"
            cache_s, full_s = statistics.median(times["cache"]), statistics.median(times["recompute"])
            rows.append(_row(bench, f"generation tok/s (KV cache) {label}", batch * count / cache_s, "tok/s"))
            if batch == 1 and bandwidth:  # the weight-read bound of batch-1 decoding
                bound = bandwidth / decode_bytes_per_token(model)
                rows.append(_row(bench, f"decode bandwidth bound tok/s {label}", bound, "tok/s"))
                rows.append(_row(bench, f"decode share of bandwidth bound {label}", count / cache_s / bound, "fraction"))
            rows.append(_row(bench, f"generation tok/s (recompute) {label}", batch * count / full_s, "tok/s"))
            rows.append(
                _row(bench, f"generation cache speedup {label}", paired_ratio(times["recompute"], times["cache"]), "×")
            )
            rows.append(
                _row(bench, f"generation exact {label}", float(torch.equal(outputs[True], outputs[False])), "bool")
            )
    return rows


def decode_bytes_per_token(model: Transformer) -> int:
    """Bytes of weights one decoded token reads at batch 1: each parameter it uses once (attention,
    norms, the router, the top-k of the routed experts, common experts, the output head), of the
    token and position embeddings only the row it looks up (a tied head reads the whole table
    anyway), and not the router-noise weights (training only)."""
    config = model.config
    share = config.routed_top_k / config.routed_experts if config.is_moe else 1.0
    read = 0.0
    for name, p in model.named_parameters():  # a tied head is listed once, as tok_emb
        if name.startswith("pos_emb") or (name.startswith("tok_emb") and not config.tie_weights):
            read += config.n_embd
        elif ".noise." not in name:
            read += p.numel() * (share if ".experts." in name else 1.0)
    return round(read) * model.tok_emb.weight.element_size()


def gemv_bandwidth(total_mib: int = 64, rows: int = 256, cols: int = 1024) -> dict[str, float]:
    """Single-row products x·W over ``total_mib`` of distinct fp32 matrices, each read once per
    sweep as decoding reads its weights (64 MiB: twice config B's weights per token, so from the
    same level of caches or memory on most CPUs): weight bytes per second in the x·W layout, and
    the time of the same products in nn.Linear's layout (x·Wᵀ, W stored (out, in)) over it."""
    matrices = [torch.randn(rows, cols) for _ in range(total_mib * 2**20 // (rows * cols * 4))]
    stored_as_linear = [w.T.contiguous() for w in matrices]
    x = torch.randn(1, rows)

    def sweep(use_linear: bool) -> None:
        for w in stored_as_linear if use_linear else matrices:
            torch.nn.functional.linear(x, w) if use_linear else x @ w

    times = interleaved({"xw": lambda: sweep(False), "linear": lambda: sweep(True)}, 5, 1, torch.device("cpu"), warmup=1)
    seconds = statistics.median(times["xw"])
    return {"bytes_per_s": len(matrices) * rows * cols * 4 / seconds, "linear_over_xw": paired_ratio(times["linear"], times["xw"])}


def bench_sampling(device: torch.device, repeats: int, new_bytes: int = 300) -> list[dict]:
    """The `cpu` preset's model (freshly initialized) writing ``new_bytes`` greedily from a
    16-byte prompt, far past its 64-byte window: ``window="slide"`` against ``"crop"``."""
    from moelab.config.presets import preset

    torch.manual_seed(0)
    model = Transformer(preset("cpu").model).to(device).eval()
    prompt = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2)).to(device)
    generate(model, prompt, 80, temperature=0.0)  # warm up, past the window
    variants = {mode: lambda mode=mode: generate(model, prompt, new_bytes, temperature=0.0, window=mode)
                for mode in ("slide", "crop")}  # fmt: skip
    times = interleaved(variants, repeats, 1, device, warmup=0)
    label = f"cpu model, {new_bytes} bytes"
    return [
        _row(None, f"sampling B/s past the window (slide) {label}", new_bytes / statistics.median(times["slide"]), "B/s"),
        _row(None, f"sampling B/s past the window (crop) {label}", new_bytes / statistics.median(times["crop"]), "B/s"),
        _row(None, f"sampling slide speedup over crop {label}", paired_ratio(times["crop"], times["slide"]), "×"),
    ]


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
        rows.append(_row(bench, measure, mfu(row["value"], flops, peak), "fraction"))
    return rows


def apply_targets(table: pd.DataFrame, targets: tuple[Target, ...], amx: bool = False) -> pd.DataFrame:
    """Fill the target and meets columns of the rows a target applies to (:meth:`Target.applies`)."""
    table = table.copy()
    for i, row in table.iterrows():
        for target in targets:
            if target.applies(row["config"], row["measure"], amx):
                table.at[i, "target"] = f"{target.op} {target.value:g}"
                table.at[i, "meets"] = "yes" if target.met(row["value"]) else "no"
    return table


def _row(bench: BenchConfig | None, measure: str, value: float, unit: str) -> dict:
    """One row of the table; ``main`` fills its target and meets columns (:func:`apply_targets`)."""
    config = bench.name if bench is not None else "-"
    return {"config": config, "measure": measure, "value": value, "unit": unit, "target": "", "meets": ""}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m moelab.bench", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS),
        help="A B C (the default); seed: the seed preset's model (for GPUs)")
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
    has_bf16, _, why = bf16_support(device)
    precisions = {"fp32": ["fp32"], "bf16": ["bf16"], "auto": ["fp32", "bf16"] if has_bf16 else ["fp32"]}
    precisions = precisions[args.precision]
    print(f"moelab bench · torch {torch.__version__} · {device} · {threads} threads · bf16: {why}")
    rated = None
    if device.type == "cuda":
        name = device_name(device)
        rated = rated_bf16_peak(name)
        if rated:
            print(f"GPU: {name} = {rated[0]}, rated dense bf16 peak {rated[1] / 1e12:.0f} TFLOP/s")
        else:
            print(f"GPU: {name}: not in the table of rated peaks; MFU is against the bf16 matmul peak measured here")
    print(f"precisions: {', '.join(precisions)}; {args.repeats} interleaved rounds × {args.steps} steps\n", flush=True)

    rows: list[dict] = []
    generation_rows: list[dict] = []  # measured on --generation-threads
    peaks = {}
    if "peak" not in args.skip:
        for p in precisions:
            peaks[p] = matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, device)
            rows.append(_row(None, f"matmul peak GFLOP/s {p}", peaks[p] / 1e9, "GFLOP/s"))
            print(f"matmul peak {p}: {peaks[p] / 1e9:.0f} GFLOP/s", flush=True)
    for name in args.configs:
        bench = CONFIGS[name]
        if "train" not in args.skip:
            print(f"config {name}: training steps …", flush=True)
            trained = bench_training(bench, device, precisions, args.repeats, args.steps)
            rows += trained
            for row in trained:  # achieved FLOP/s over the measured peak
                for p, peak in peaks.items():
                    if row["measure"] == f"train GFLOP/s moelab {p}":
                        rows.append(_row(bench, f"MFU {p}", row["value"] * 1e9 / peak, "fraction"))
            if device.type == "cuda":
                rows += gpu_rows(bench, trained, rated, peaks.get("bf16"))
        if "memory" not in args.skip:
            print(f"config {name}: peak memory …", flush=True)
            rows += bench_memory(bench, device, precisions)
    if "generation" not in args.skip:
        print(f"generation (config {args.generation_config}, {args.generation_threads} thread(s)) …", flush=True)
        with _threads(args.generation_threads):
            generation_rows += bench_generation(
                CONFIGS[args.generation_config], device, [128, 256], [1, 8], args.generation_repeats, args.new_tokens
            )
            generation_rows += bench_sampling(device, args.generation_repeats, args.sampling_bytes)

    table = pd.DataFrame(rows + generation_rows)
    amx = device.type == "cpu" and torch.cpu._is_amx_tile_supported()
    table = apply_targets(table, GPU_TARGETS if device.type == "cuda" else TARGETS, amx)
    table.insert(1, "threads", [threads] * len(rows) + [args.generation_threads] * len(generation_rows))
    out = reports_dir() / "benchmarks" if args.out is None else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    shown = table.assign(value=table["value"].map(_fmt))
    (out / "bench.md").write_text(shown.to_markdown(index=False) + "\n")
    from moelab.bench.plots import plot_benchmark  # matplotlib only when the figure is drawn

    plot_benchmark(table, out / "bench.png")
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 60):
        print("\n" + shown.to_string(index=False))
    print(f"\nwritten: {out / 'bench.csv'}, bench.md, bench.png")
    return 0


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
