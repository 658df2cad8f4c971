"""The Trainer's validation loss: mean cross-entropy over fixed windows, shared out over torchrun ranks."""

from __future__ import annotations

import torch

from moelab.nn.model import Transformer, eval_mode
from moelab.train import distributed


@torch.no_grad()
def mean_loss(model: Transformer, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy in nats over every position of the given windows.

    Under torchrun each rank scores every W-th window and the sums are reduced, so all
    ranks return the mean over all windows.
    """
    info = distributed.from_env() if torch.distributed.is_initialized() else distributed.DistInfo()
    x, y = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            total += model(xb, yb).ce_loss.item() * yb.numel()
            count += yb.numel()
    total, count = distributed.all_reduce(torch.tensor([total, count])).tolist()
    return total / count
