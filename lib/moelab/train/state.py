"""Where a run stands: the trainer's state, saved in every checkpoint and restored from it as one unit.

The window and learning-rate schedules and the budget are functions of the step, the tokens
seen and the training time, so those three restore them; the balance biases are buffers of
the model (saved with its weights); the sampler's generator restores the order of the
batches, and every rank's random state its dropout and router noise. The checkpoint keeps
today's layout (the ``extra`` dict beside the weights), so checkpoints of earlier versions
load and resume unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moelab.data.batches import WindowSampler
from moelab.runs.files import read_records


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state: the CPU generator's, and the device's on CUDA."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


@dataclass
class TrainerState:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # training time so far, evaluation and checkpoints excluded
    rows: list[dict] = field(default_factory=list)  # the metric rows logged so far
    routing_rows: list[dict] = field(default_factory=list)  # the routing snapshots taken so far

    def checkpoint_extra(self, sampler: WindowSampler, rng_ranks: list[dict], **run: Any) -> dict[str, Any]:
        """The checkpoint's ``extra`` dict: this state, the sampler, every rank's RNG, and ``run``
        (run name, dataset, tokenizer record). The step is the checkpoint's own field; the
        rows live in the run's parquet files, written before the checkpoint."""
        return {
            "tokens": self.tokens,
            "elapsed_s": self.elapsed_s,
            "sampler": sampler.state_dict(),
            "rng_cpu": rng_ranks[0]["cpu"],
            "rng_cuda": rng_ranks[0]["cuda"],
            "rng_ranks": rng_ranks,
            "world_size": len(rng_ranks),
            **run,
        }

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], reports: Path) -> TrainerState:
        """The state a checkpoint saved, with the metric and routing rows up to its step."""
        extra, step = payload["extra"], payload["step"]
        return cls(
            step=step,
            tokens=extra["tokens"],
            elapsed_s=extra["elapsed_s"],
            rows=read_records(reports / "metrics.parquet", step),
            routing_rows=read_records(reports / "routing.parquet", step),
        )


def restore_streams(
    extra: dict[str, Any], sampler: WindowSampler, rank: int, world_size: int, device: torch.device, reseed: int
) -> None:
    """Put the sampler and this rank's random state back where the checkpoint left them.

    Under another world size the data order and the schedules continue exactly, while the
    noise streams restart from ``reseed`` (a seed derived from the run's seed, rank and step).
    """
    sampler.load_state_dict(extra["sampler"])
    ranks = extra.get("rng_ranks") or [{"cpu": extra["rng_cpu"], "cuda": extra.get("rng_cuda")}]
    if len(ranks) != world_size:
        torch.manual_seed(reseed)
        return
    torch.set_rng_state(ranks[rank]["cpu"])
    if device.type == "cuda" and ranks[rank]["cuda"] is not None:
        torch.cuda.set_rng_state(ranks[rank]["cuda"], device)
