"""Windows of token ids (bytes, or BPE ids) for training and evaluation.

One helper gathers windows of tokens from their start offsets (:func:`gather_windows`);
the random training batches (:class:`WindowSampler`) and the fixed, evenly spaced
validation windows (:func:`evenly_spaced_windows`, :func:`fixed_windows`) both use it.
"""

from __future__ import annotations

import numpy as np
import torch


def as_token_tensor(data: np.ndarray | bytes | torch.Tensor) -> torch.Tensor:
    """A tensor of the token ids (a copy, so the caller's array may change afterwards).

    Bytes stay uint8; wider ids (uint16 BPE ids) become int32, which torch indexes everywhere.
    """
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, torch.Tensor):
        return data.clone() if data.dtype in (torch.uint8, torch.int32, torch.int64) else data.to(torch.int32)
    data = np.asarray(data)
    return torch.from_numpy(np.array(data, dtype=np.uint8 if data.dtype == np.uint8 else np.int32))


def gather_windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Windows ``data[s : s + length]`` for each start ``s``, as an (n, length) tensor of data's dtype."""
    return data[starts.unsqueeze(1) + torch.arange(length)]


def evenly_spaced_starts(n_tokens: int, length: int, count: int) -> torch.Tensor:
    """``count`` start offsets (at most one per possible window) spread evenly from 0 to ``n_tokens - length``.

    The first window begins at the first token and the last one ends at the last token.
    """
    last = n_tokens - length
    if last < 0:
        raise ValueError(f"need at least {length} tokens, got {n_tokens}")
    return torch.linspace(0, last, min(count, last + 1)).long()


def evenly_spaced_windows(data: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` windows of ``length`` tokens spread evenly over data, as an (n, length) array of ids."""
    tensor = as_token_tensor(data)
    return gather_windows(tensor, evenly_spaced_starts(len(tensor), length, count), length).numpy()


def fixed_windows(data: np.ndarray, window: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced windows over data (the same every evaluation), as (x, y).

    Each row is ``window + 1`` tokens: x its first ``window``, y the same shifted by one.
    """
    if len(data) <= window + 1:
        raise ValueError(
            f"the validation split has {len(data)} tokens, fewer than one window of {window} + 1; "
            "use a larger corpus or a larger val_fraction"
        )
    count = min(count, len(data) - window - 1)
    chunk = torch.from_numpy(evenly_spaced_windows(data, window + 1, count)).long()
    return chunk[:, :-1], chunk[:, 1:]


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on ``device``: on CUDA pinned first and copied without blocking (the copy
    overlaps the GPU's work; kernels queued after it on the stream wait for it), else ``.to``."""
    device = torch.device(device)
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


class WindowSampler:
    """Random training windows from an array of token ids, with resumable state.

    Every rank draws the same global batch from one seeded stream and keeps its own
    contiguous share of the rows (rank r of W: rows r·n/W … (r+1)·n/W), so the data
    a rank sees is a deterministic function of (seed, rank), W processes together see
    exactly the batches of one process, and a resumed run may change the world size.
    """

    def __init__(self, data: np.ndarray, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.data = as_token_tensor(data)
        self.generator = torch.Generator().manual_seed(seed * 1009)
        self.rank, self.world_size = rank, world_size

    def batch(self, sequences: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch of ``sequences`` windows."""
        if len(self.data) <= window + 1:
            raise ValueError(f"the training split has {len(self.data)} tokens, fewer than a window of {window} + 1")
        if sequences % self.world_size:
            raise ValueError(
                f"a batch of {sequences} sequences cannot be split evenly over {self.world_size} processes"
            )
        starts = torch.randint(0, len(self.data) - window - 1, (sequences,), generator=self.generator)
        share = sequences // self.world_size
        starts = starts[self.rank * share : (self.rank + 1) * share]
        chunk = gather_windows(self.data, starts, window + 1).long()
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
