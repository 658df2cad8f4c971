"""Device and numeric precision: where training runs, and float32 or bfloat16 autocast there.

:func:`resolve_device` turns ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``,
``"cuda"`` or ``"cuda:N"`` into a ``torch.device``; the Trainer, the command lines, scoring
and model loading all use it, so every entry point accepts the same names.

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
import re

import torch

from .config import PRECISIONS


DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for ``"auto"`` (or None): CUDA when available, else CPU; or ``cpu``, ``cuda``, ``cuda:N``.

    A CUDA device that this machine does not have is an error that says so.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ValueError(f"device: must be one of {', '.join(DEVICES)}; got {device!r}")
    resolved = torch.device(text)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but torch finds no CUDA GPU here; use 'auto' or 'cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device: {device!r} asked for, but this machine has {count} CUDA GPU(s)")
    return resolved


def device_name(device: str | torch.device) -> str:
    """What the device is, for logs and config.json: the GPU's name on CUDA (``torch.cuda.get_device_name``), else ``cpu``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


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
