"""Device and numeric precision: where training runs, and float32 or bfloat16 autocast there.

:func:`moelab.device.resolve_device` turns ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``,
``"cuda"`` or ``"cuda:N"`` into a ``torch.device``; the Trainer, the command lines, scoring
and model loading all use it, so every entry point accepts the same names.

``precision="auto"`` picks bf16 on CUDA GPUs with native bf16 (compute capability 8.0+).
On a CPU with bf16 matrix units (AMX tiles or AVX512-BF16) it *measures* first: a few
forward + backward passes of the model to train, fp32 against bf16 autocast
(:func:`bf16_step_speedup`), and takes bf16 only when it is at least
``AUTO_BF16_MIN_SPEEDUP`` faster. Whether bf16 pays depends on the model as much as on the
chip: on an AMD EPYC with AVX512-BF16 (2 threads) bf16 matmuls ran 2.3× float32 at 2048³,
yet a training step of the ``cpu`` preset's size ran 0.84× and a 256-wide model 1.31×; on
an Intel Xeon with AMX the ``cpu`` preset's step ran about 0.3× in bf16. CPUs without
either unit stay in float32 without measuring. Forcing ``"bf16"`` where it measures
slower warns with the measured ratio. Parameters, the optimizer state, the router's softmax
and the loss stay in float32 either way; under bf16 the matmuls and the activations
between them run in bfloat16.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch

from moelab.config.train import PRECISIONS


def bf16_support(device: torch.device | str) -> tuple[bool, bool, str]:
    """``(runs, units, why)``: whether ``device`` has native bf16 matmuls, whether it has bf16
    matrix units that ``auto`` may use (CUDA: always used; CPU: measured first), and why."""
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
            return True, True, "the CPU has AVX512-BF16 (no AMX)"
        return False, False, "the CPU has neither AMX nor AVX512-BF16"
    return False, False, f"no bf16 fast path known for {device.type}"


AUTO_BF16_MIN_SPEEDUP = 1.15  # auto takes bf16 on a CPU only when a training step is this much faster


def resolve_precision(
    precision: str, device: torch.device | str, speedup: Callable[[], float] | None = None
) -> tuple[str, str]:
    """``("fp32" | "bf16", reason)`` for a requested precision on a device.

    ``speedup``: measures fp32 time / bf16 time of a training step (e.g.
    :func:`bf16_step_speedup` of the model to train). On a CPU with bf16 units ``auto``
    takes bf16 only if it measures at least ``AUTO_BF16_MIN_SPEEDUP`` (without a
    measurement: float32); a forced ``bf16`` that measures slower warns with the ratio.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    runs, units, why = bf16_support(device)
    measure = device.type == "cpu" and speedup is not None and (precision == "bf16" or precision == "auto" and units)
    ratio = speedup() if measure else None
    measured = f"a bf16 training step measured {ratio:.2f}× fp32's speed" if ratio is not None else ""
    if precision == "auto":
        if device.type != "cpu" or not units:
            return ("bf16" if units else "fp32"), f"auto: {why}"
        if ratio is None:
            return "fp32", f"auto: {why}, but bf16 was not measured for this model"
        chosen = "bf16" if ratio >= AUTO_BF16_MIN_SPEEDUP else "fp32"
        return chosen, f"auto: {why}; {measured} for this model"
    if precision == "bf16" and ratio is not None and ratio < 1:
        warnings.warn(f"precision='bf16' on this CPU ({why}): {measured}; precision='fp32' or 'auto' is faster here",
                      stacklevel=3)  # fmt: skip
        return "bf16", f"requested ({measured}{'' if runs else '; emulated'})"
    if precision == "bf16" and not runs:
        return "bf16", f"requested (emulated, slow here: {why})"
    return precision, "requested"


_SPEEDUPS: dict[tuple, float] = {}


def bf16_step_speedup(model_config, sequences: int, device: torch.device | str, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a forward + backward pass of ``model_config`` on ``sequences`` random
    windows of its full context (> 1: bf16 is faster), the median of ``repeats`` interleaved pairs.

    Each pass draws new windows: with one fixed batch the router would send the same number
    of tokens to each expert every time, and shapes that never change flatter bf16 on a CPU
    (a new matmul shape costs oneDNN a new kernel; training changes them every step).

    Measured once per (config, batch, device, threads) in a process. The RNG state is restored
    afterwards, so measuring does not change the run that follows.
    """
    from moelab.nn.model import Transformer
    from moelab.timing import interleaved, paired_ratio

    device = torch.device(device)
    key = (repr(model_config), sequences, str(device), torch.get_num_threads())
    if key not in _SPEEDUPS:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model = Transformer(model_config).to(device)
            shape = (sequences, model_config.context_window + 1)

            def step(precision: str) -> None:  # a new batch each time: the experts' loads change, as in training
                x = torch.randint(0, model_config.vocab_size, shape, device=device)
                with autocast(precision, device):
                    loss = model(x[:, :-1], targets=x[:, 1:]).loss
                loss.backward()
                model.zero_grad(set_to_none=True)

            times = interleaved({p: lambda p=p: step(p) for p in ("fp32", "bf16")}, repeats, 1, device, warmup=1)
        _SPEEDUPS[key] = paired_ratio(times["fp32"], times["bf16"])
    return _SPEEDUPS[key]


def autocast(precision: str, device: torch.device | str, weight_cache: bool = True):
    """The context that runs a forward pass in the resolved precision (``fp32``: no autocast).

    ``weight_cache=False``: no cache of the weights' bf16 copies (a CUDA graph capture needs it
    off: the copies would outlive the capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: autocast needs a resolved precision (fp32 or bf16), got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=weight_cache)
