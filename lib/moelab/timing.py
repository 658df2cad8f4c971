"""Timing side by side: interleaved repeats (A B A B …), paired ratios, the matmul peak."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, inner: int, device: torch.device, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds of A B C … with ``inner`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / inner)
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of numerator[i] / denominator[i] (pairs measured back to back)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Best FLOP/s of square matmuls (1024, 2048) in ``dtype`` with the current thread count."""
    best = 0.0
    for n in (1024, 2048):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = min(interleaved({"mm": lambda a=a, b=b: a @ b}, repeats, 2, device, warmup=1)["mm"])
        best = max(best, 2 * n**3 / seconds)
    return best
