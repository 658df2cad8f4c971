"""Where a training step's time goes on a GPU: the evidence behind the MFU of issue 18.

    PYTHONPATH=lib python tools/gpu_profile.py OUT.md [--config seed] [--smoke]

1. matmul rate at the step's shapes, n_embd 1028 (the seed's; rows of 2,056 bytes in bf16,
   not a multiple of 16) against 1024 and 1032;
2. per variant (moelab and the dense model with the same active parameters, eager and
   replayed from a CUDA graph, graphed without the aligned widths of moelab.nn.aligned):
   milliseconds per step (CUDA events), and the share of it the GPU spends in kernels
   (torch.profiler): well under 1 means the GPU waits on the host;
3. the eager moelab step's most expensive kernels.

``--smoke`` runs it on the CPU with config A (no graphs, no kernel times), to check the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from moelab.bench.configs import CONFIGS
from moelab.bench.training import build, random_batches, training_step
from moelab.bench.flops import train_flops_per_token


def _time_ms(fn, device, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def matmul_rates(device, dtype, tokens: int) -> pd.DataFrame:
    rows = []
    for d in (1024, 1028, 1032):
        a, b = torch.randn(tokens, d, device=device, dtype=dtype), torch.randn(d, 4 * d, device=device, dtype=dtype)
        ms = _time_ms(lambda: a @ b, device)
        rows.append({"shape": f"({tokens}×{d}) @ ({d}×{4 * d})", "row bytes": d * a.element_size(),
                     "ms": ms, "TFLOP/s": 2 * tokens * d * 4 * d / ms / 1e9})  # fmt: skip
    return pd.DataFrame(rows)


def kernel_ms(fn, steps: int = 5) -> tuple[float, pd.DataFrame]:
    """Milliseconds of GPU kernels per step, and the top kernels, from torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        us = e.self_cuda_time_total if us is None else us
        annotation = "#" in e.key or getattr(e, "is_user_annotation", False)  # a range over kernels, not one
        if us > 0 and not annotation and getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
            rows.append({"kernel": e.key[:90], "calls/step": e.count / steps, "ms/step": us / 1e3 / steps})
    table = pd.DataFrame(rows).sort_values("ms/step", ascending=False)
    return float(table["ms/step"].sum()), table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="seed")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    bench = CONFIGS["A" if args.smoke else args.config]
    precision = "fp32" if args.smoke else "bf16"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    tokens = bench.batch * bench.window
    name = "cpu" if args.smoke else torch.cuda.get_device_name(device)
    text = [f"# Where a training step's time goes: config {bench.name} on {name}, torch {torch.__version__}", ""]

    text += ["## matmul rate at the step's shapes", "", matmul_rates(device, dtype, tokens).to_markdown(index=False, floatfmt=".3g"), ""]
    print("\n".join(text), flush=True)

    kinds = ["moelab", "dense"] + ([] if args.smoke else ["moelab graphed", "dense graphed", "moelab graphed unpadded",
                                                          "dense graphed unpadded"])
    rows, tops = [], {}
    batch = random_batches(bench, device)
    for kind in kinds:
        try:
            model = build(kind.split()[0], bench, device)
            model.set_padding(widths=not kind.endswith("unpadded"))  # the same step with and without aligned widths
            step = training_step(model, kind.removesuffix(" unpadded"), precision, device, batch)
            ms = _time_ms(step, device)
        except Exception as err:  # noqa: BLE001  (the other variants still run)
            rows.append({"variant": f"{kind} {precision}", "error": f"{type(err).__name__}: {err}"[:200]})
            print(rows[-1], flush=True)
            continue
        config = bench.model_config() if kind.startswith("moelab") else bench.model_config().dense_equivalent()
        row = {"variant": f"{kind} {precision}", "ms/step": ms, "tokens/s": tokens / ms * 1e3,
               "TFLOP/s": train_flops_per_token(config, bench.window) * tokens / ms / 1e9}  # fmt: skip
        if device.type == "cuda":
            busy, table = kernel_ms(step)
            row.update({"kernel ms/step": busy, "GPU busy": busy / ms, "kernels/step": table["calls/step"].sum()})
            tops[kind] = table
        rows.append(row)
        print(row, flush=True)
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    text += ["## one training step per variant (forward, backward, clip, fused AdamW)", "",
             pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"), ""]  # fmt: skip
    for kind, table in tops.items():
        text += [f"## {kind} {precision}: kernels, most expensive first", "", table.head(12).to_markdown(index=False, floatfmt=".3g"), ""]
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
