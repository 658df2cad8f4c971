"""Where things run: one name for a device ('auto', 'cpu', 'cuda', 'cuda:N') everywhere, and its name for logs."""

from __future__ import annotations

import re

import torch


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
