"""Several processes, one model: torchrun and DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node=N -m moelab.train ...`` starts N copies of the same
Trainer; each reads its rank from the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT) and joins the process group: NCCL on GPUs (one per
local rank), Gloo on CPUs. Rank 0 alone writes metrics, reports and checkpoints.

:func:`launch` runs such a job from a notebook as a subprocess and streams its output.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# Backstop for a collective whose peer died without torchrun noticing (torchrun itself
# stops the other workers within seconds when one exits).
TIMEOUT_ENV = "MOELAB_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """The rank and world size torchrun put in the environment (one process when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (torchrun sets them): {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when started by torchrun; returns the rank info and this rank's device."""
    info = from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    if dist.get_world_size() != info.world_size:
        raise RuntimeError(f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {info.world_size}")
    return info, device


def ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel, after :func:`setup` (one device per rank on CUDA).

    No buffer broadcast before forwards (only at the start): the model's buffers stay equal
    on every rank by construction (position tables; the balance biases, moved by
    all-reduced loads), except the slot counts each MoE layer keeps of its own rank's
    micro-batches until the optimizer step (``balance="bias"``), which are not rank 0's to set.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum or max of a tensor over ranks (unchanged in a single process); returns a CPU float64 tensor."""
    out = values.detach().to(torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        out = out.to(backend_device)
        dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return out.cpu()


def all_gather_object(obj: Any) -> list[Any]:
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ============================================================================ launching


def torchrun_command(nproc: int, train_args: list[str], nnodes: int = 1) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m moelab.train ARGS`` (one node)."""
    if not (isinstance(nproc, int) and nproc >= 1):
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc}",
        "-m",
        "moelab.train",
        *train_args,
    ]


def launch(
    nproc: int,
    run_name: str,
    *,
    preset: str = "cpu",
    overrides: dict[str, Any] | None = None,
    dataset: str = "machado",
    if_exists: str = "error",
    extra_args: list[str] | None = None,
    echo=None,
):
    """Train with ``nproc`` processes on this machine via torchrun, streaming its output; returns the TrainResult.

    ``overrides`` are config fields (model and training) as for ``--config``;
    ``if_exists`` is ``error``, ``resume`` or ``overwrite`` as in notebook 02.
    """
    import yaml

    from moelab.runs.files import result_from_files

    if if_exists not in ("error", "resume", "overwrite"):
        raise ValueError(f"if_exists must be error, resume or overwrite, got {if_exists!r}")
    echo = echo or (lambda text: print(text, end="", flush=True))
    with tempfile.TemporaryDirectory(prefix="moelab-launch-") as scratch:
        config_file = Path(scratch) / "overrides.yaml"
        config_file.write_text(yaml.safe_dump(overrides or {}))
        args = ["--preset", preset, "--run-name", run_name, "--dataset", dataset, "--config", str(config_file)]
        args += {"error": [], "resume": ["--resume"], "overwrite": ["--overwrite"]}[if_exists] + list(extra_args or [])
        command = torchrun_command(nproc, args)
        echo("$ torchrun " + " ".join(command[3:]) + "\n")  # the equivalent command line
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        while chunk := process.stdout.read1(4096):
            echo(chunk.decode("utf-8", errors="replace"))
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"the {nproc}-process run {run_name!r} failed (exit code {code}); its output is above")
    return result_from_files(run_name)
