"""Numeric precision of training: float32, or bfloat16 autocast where the hardware runs it fast.

``precision="auto"`` picks bf16 on CUDA GPUs with native bf16 (compute capability 8.0+)
and on CPUs with AMX tiles, float32 elsewhere. CPUs with only AVX512-BF16 stay in
float32 under ``auto``: measured on such a CPU (AMD EPYC, 2 threads), bf16 matmuls ran
2.3× float32 at 2048³ but a training step of the benchmark's config A (the ``cpu``
preset's size) ran *slower* in bf16 (0.84×) and config B 1.31× faster; ask for
``"bf16"`` to use it anyway. Parameters, the optimizer state, the router's softmax and the loss stay
in float32 either way; under bf16 the matmuls and the activations between them run in
bfloat16.
"""

from __future__ import annotations

import contextlib

import torch

from .config import PRECISIONS


def bf16_support(device: torch.device | str) -> tuple[bool, bool, str]:
    """``(runs, fast, why)``: whether ``device`` has native bf16 matmuls, whether ``auto`` uses them, and why."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return True, True, f"CUDA compute capability {major}.{minor} has bf16 tensor cores"
        return False, False, f"CUDA compute capability {major}.{minor} has no bf16 tensor cores (needs 8.0+)"
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True, True, "the CPU has AMX tiles"
        if torch.cpu._is_avx512_bf16_supported():
            return True, False, "the CPU has AVX512-BF16 but no AMX (bf16 training steps measured no faster)"
        return False, False, "the CPU has neither AMX nor AVX512-BF16"
    return False, False, f"no bf16 fast path known for {device.type}"


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """``("fp32" | "bf16", reason)`` for a requested precision on a device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    runs, fast, why = bf16_support(device)
    if precision == "auto":
        return ("bf16" if fast else "fp32"), f"auto: {why}"
    if precision == "bf16" and not runs:
        return "bf16", f"requested (emulated, slow here: {why})"
    return precision, "requested"


def autocast(precision: str, device: torch.device | str):
    """The context that runs a forward pass in the resolved precision (``fp32``: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: autocast needs a resolved precision (fp32 or bf16), got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
