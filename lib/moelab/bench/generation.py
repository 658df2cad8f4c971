"""Generation measurements: KV-cache decoding against recomputation, its weight-read bound, sampling past the window."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time

import torch
from torch import Tensor

from moelab.bench.configs import BenchConfig
from moelab.bench.table import table_row
from moelab.generate.compiled import CompiledDecoder, break_even_tokens
from moelab.generate.loop import generate
from moelab.nn.model import Transformer
from moelab.timing import interleaved, paired_ratio


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
        rows.append(table_row(bench, "GEMV weight bandwidth GB/s (x·W, 64 MiB fp32)", bandwidth / 1e9, "GB/s"))
        rows.append(table_row(bench, "GEMV time, nn.Linear layout (x·Wᵀ) / x·W", gemv["linear_over_xw"], "×"))
    for window in windows:
        torch.manual_seed(0)
        model = Transformer(bench.model_config(context_window=window)).to(device).eval()
        rows.append(table_row(bench, f"decode weight MB per token window {window}", decode_bytes_per_token(model) / 1e6, "MB"))
        count = new_tokens or window - 16
        for batch in batches:
            prompt = torch.randint(0, 256, (batch, 16), generator=torch.Generator().manual_seed(2)).to(device)
            compile_s = first_compile_seconds(model, prompt) if device.type == "cpu" and batch == 1 else None
            compiles = compile_s is not None  # the compiled one-token step: CPU, batch 1, where it compiles
            generate(model, prompt, 4, temperature=0.0)  # warm up
            outputs = {}

            def run(variant: str, model=model, prompt=prompt, count=count, outputs=outputs) -> None:
                options = {"cache": {}, "recompute": {"use_cache": False}, "compiled": {"compile_step": True}}[variant]
                outputs[variant] = generate(model, prompt, count, temperature=0.0, **options)

            names = ["cache", "recompute"] + (["compiled"] if compiles else [])
            times = interleaved({name: lambda name=name, run=run: run(name) for name in names}, repeats, 1, device, warmup=0)
            seconds = {name: statistics.median(t) for name, t in times.items()}
            label = f"window {window} batch {batch}"
            rows.append(table_row(bench, f"generation tok/s (KV cache) {label}", batch * count / seconds["cache"], "tok/s"))
            if compiles:
                pair = {"compiled": times["compiled"], "uncompiled": times["cache"]}
                exact = torch.equal(outputs["compiled"], outputs["cache"])
                rows += compiled_rows(bench, f"generation tok/s ({{}}) {label}", "tok/s", label, count, pair, compile_s, exact)
            if batch == 1 and bandwidth:  # the weight-read bound of batch-1 decoding
                bound = bandwidth / decode_bytes_per_token(model)
                fastest = min(seconds["cache"], seconds.get("compiled", math.inf))
                rows.append(table_row(bench, f"decode bandwidth bound tok/s {label}", bound, "tok/s"))
                rows.append(table_row(bench, f"decode share of bandwidth bound {label}", count / fastest / bound, "fraction"))
            rows.append(table_row(bench, f"generation tok/s (recompute) {label}", batch * count / seconds["recompute"], "tok/s"))
            rows.append(
                table_row(bench, f"generation cache speedup {label}", paired_ratio(times["recompute"], times["cache"]), "×")
            )
            rows.append(
                table_row(bench, f"generation exact {label}", float(torch.equal(outputs["cache"], outputs["recompute"])), "bool")
            )
    return rows


def first_compile_seconds(model: Transformer, prompt: Tensor) -> float | None:
    """Seconds the first compiled one-token step of ``model``'s configuration takes beyond an
    uncompiled step, compiled from an empty Inductor cache (what a first use costs; later
    processes load the compiled code from the cache). 0 if this process compiled it already;
    None where it cannot compile (the step then runs uncompiled: nothing to measure)."""
    with tempfile.TemporaryDirectory() as cache_dir, _environment("TORCHINDUCTOR_CACHE_DIR", cache_dir):
        start = time.perf_counter()
        generate(model, prompt, 2, temperature=0.0, compile_step=True)  # the prompt's forward, then one step
        first = time.perf_counter() - start
    if not CompiledDecoder.available():
        return None
    start = time.perf_counter()
    generate(model, prompt, 2, temperature=0.0)
    return max(0.0, first - (time.perf_counter() - start))


@contextlib.contextmanager
def _environment(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name)
        else:
            os.environ[name] = before


def compiled_rows(
    bench: BenchConfig | None, speed: str, unit: str, label: str, count: int, times: dict, compile_s: float, exact: bool
) -> list[dict]:
    """The compiled step (``times["compiled"]``) beside the uncompiled one (``times["uncompiled"]``)
    of the same run: its speed (``speed`` names it, "{}" standing for the variant) with the
    compile time excluded and included over ``count`` tokens, the speedup, the compile time,
    the tokens after which compiling has paid, and whether it wrote the same tokens."""
    compiled_s, uncompiled_s = statistics.median(times["compiled"]), statistics.median(times["uncompiled"])
    even = break_even_tokens(compile_s, count / compiled_s, count / uncompiled_s)
    return [
        table_row(bench, speed.format("compiled step"), count / compiled_s, unit),
        table_row(bench, speed.format("compiled step, compile included"), count / (compiled_s + compile_s), unit),
        table_row(bench, f"compiled step speedup {label}", paired_ratio(times["uncompiled"], times["compiled"]), "×"),
        table_row(bench, f"compiled step compile seconds {label}", compile_s, "s"),
        table_row(bench, f"compiled step break-even tokens {label}", even, "tokens"),
        table_row(bench, f"compiled step exact {label}", float(exact), "bool"),
    ]


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
    compile_s = first_compile_seconds(model, prompt) if device.type == "cpu" else None  # None: not compiled
    generate(model, prompt, 80, temperature=0.0)  # warm up, past the window
    options = {"slide": {"window": "slide"}, "crop": {"window": "crop"}}
    if compile_s is not None:
        options["compiled"] = {"window": "slide", "compile_step": True}
    outputs = {}

    def run(variant: str) -> None:
        outputs[variant] = generate(model, prompt, new_bytes, temperature=0.0, **options[variant])

    times = interleaved({name: lambda name=name: run(name) for name in options}, repeats, 1, device, warmup=0)
    label = f"cpu model, {new_bytes} bytes"
    rows = [
        table_row(None, f"sampling B/s past the window (slide) {label}", new_bytes / statistics.median(times["slide"]), "B/s"),
        table_row(None, f"sampling B/s past the window (crop) {label}", new_bytes / statistics.median(times["crop"]), "B/s"),
        table_row(None, f"sampling slide speedup over crop {label}", paired_ratio(times["crop"], times["slide"]), "×"),
    ]
    if compile_s is not None:
        pair = {"compiled": times["compiled"], "uncompiled": times["slide"]}
        exact = torch.equal(outputs["compiled"], outputs["slide"])
        speed = f"sampling B/s past the window (slide, {{}}) {label}"
        rows += compiled_rows(None, speed, "B/s", f"(slide) {label}", new_bytes, pair, compile_s, exact)
    return rows
