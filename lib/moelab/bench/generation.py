"""Generation measurements: KV-cache decoding against recomputation, its weight-read bound, sampling past the window."""

from __future__ import annotations

import statistics

import torch

from moelab.bench.configs import BenchConfig
from moelab.bench.table import table_row
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
            generate(model, prompt, 4, temperature=0.0)  # warm up
            outputs = {}

            def run(use_cache: bool, model=model, prompt=prompt, count=count, outputs=outputs) -> None:
                outputs[use_cache] = generate(model, prompt, count, temperature=0.0, use_cache=use_cache)

            variants = {"cache": lambda run=run: run(True), "recompute": lambda run=run: run(False)}
            times = interleaved(variants, repeats, 1, device, warmup=0)
            label = f"window {window} batch {batch}"
            cache_s, full_s = statistics.median(times["cache"]), statistics.median(times["recompute"])
            rows.append(table_row(bench, f"generation tok/s (KV cache) {label}", batch * count / cache_s, "tok/s"))
            if batch == 1 and bandwidth:  # the weight-read bound of batch-1 decoding
                bound = bandwidth / decode_bytes_per_token(model)
                rows.append(table_row(bench, f"decode bandwidth bound tok/s {label}", bound, "tok/s"))
                rows.append(table_row(bench, f"decode share of bandwidth bound {label}", count / cache_s / bound, "fraction"))
            rows.append(table_row(bench, f"generation tok/s (recompute) {label}", batch * count / full_s, "tok/s"))
            rows.append(
                table_row(bench, f"generation cache speedup {label}", paired_ratio(times["recompute"], times["cache"]), "×")
            )
            rows.append(
                table_row(bench, f"generation exact {label}", float(torch.equal(outputs[True], outputs[False])), "bool")
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
        table_row(None, f"sampling B/s past the window (slide) {label}", new_bytes / statistics.median(times["slide"]), "B/s"),
        table_row(None, f"sampling B/s past the window (crop) {label}", new_bytes / statistics.median(times["crop"]), "B/s"),
        table_row(None, f"sampling slide speedup over crop {label}", paired_ratio(times["crop"], times["slide"]), "×"),
    ]
