"""Distributed training with torchrun and DDP on CPU (Gloo, 2 processes, tiny preset)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moelab import ModelConfig, Transformer, load_checkpoint
from moelab.train import distributed
from moelab.train.distributed import torchrun_command
from moelab.nn.moe.layer import MoE
from moelab.nn.moe.losses import load_balancing_loss
from moelab.paths import data_dir, reports_dir
from moelab.runs.files import list_checkpoints

# no router noise and no dropout: per-rank random streams would differ from one process's
SAME_MATH = ["--set", "router_noise=false", "--set", "dropout=0.0", "--set", "log_every=1"]
TIMEOUT_S = 120  # a job with a dead rank must end well within this


def train(nproc: int, dataset: str, run: str, *args: str, wait: bool = True):
    train_args = ["--preset", "tiny", "--dataset", dataset, "--run-name", run, "--no-progress", *args]
    command = torchrun_command(nproc, train_args) if nproc > 1 else [sys.executable, "-m", "moelab.train", *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S * 3, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return pd.read_parquet(reports_dir() / run / "metrics.parquet")


def test_two_processes_match_one_with_the_same_global_batch(toy_dataset):
    one = train(1, toy_dataset, "one-proc", *SAME_MATH, "--set", "max_steps=20")
    two = train(2, toy_dataset, "two-proc", *SAME_MATH, "--set", "max_steps=20")
    assert two["step"].tolist() == one["step"].tolist() == list(range(1, 21))
    assert two["tokens"].tolist() == one["tokens"].tolist()  # tokens count the global batch
    assert two["window"].tolist() == one["window"].tolist()
    # the same data and weights; what differs: the load-balancing loss is computed per rank
    # (a product of per-rank averages) and the float sums run in another order
    pd.testing.assert_series_equal(two["loss"], one["loss"], rtol=1e-3, atol=0)
    pd.testing.assert_series_equal(two["val_bpb"], one["val_bpb"], rtol=1e-3, atol=0)  # reduced over ranks
    assert two["loss"].iloc[0] == pytest.approx(one["loss"].iloc[0], rel=1e-5)  # before any update
    # rank 0 alone wrote: one checkpoint per save, recording the world size
    assert load_checkpoint(list_checkpoints(data_dir() / "checkpoints" / "two-proc")[-1])["extra"]["world_size"] == 2


def _steered_moe() -> tuple[MoE, torch.Tensor]:
    """A small MoE whose expert 0 wins for inputs along +direction and never along -direction."""
    torch.manual_seed(0)
    moe = MoE(ModelConfig(n_embd=8, n_heads=2, n_experts=4, top_k=1, router_noise=False, expert_hidden=16))
    direction = torch.nn.functional.normalize(torch.randn(8), dim=0)
    with torch.no_grad():
        moe.router.gate.weight.zero_()
        moe.router.gate.weight[0] = 5 * direction
        moe.router.gate.weight[1:] = 0.1 * torch.randn(3, 8)
    return moe, direction


def _rank_input(rank: int, direction: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(1, 12, 8, generator=generator) * 0.1 + (1 if rank == 0 else -1) * direction


def _loss(out) -> torch.Tensor:
    y, router = out
    return y.square().mean() + load_balancing_loss(router.probs, router.experts, router.probs.shape[-1])


def _unused_expert_worker(rank: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    moe, direction = _steered_moe()
    x = _rank_input(rank, direction)
    ddp = torch.nn.parallel.DistributedDataParallel(moe)  # kept alive: its hooks run during backward
    _loss(ddp(x)).backward()
    chosen = moe.router.gate(x.view(-1, 8)).argmax(-1).unique().tolist()
    torch.save({"chosen": chosen, "grads": {n: p.grad for n, p in moe.named_parameters()}}, f"{results}/rank{rank}.pt")
    dist.destroy_process_group()


def test_an_expert_without_tokens_on_one_rank_keeps_gradients_in_sync(tmp_path):
    """DDP without find_unused_parameters: expert 0 gets tokens on rank 0 only. No hang, and both ranks
    end with the mean of the per-rank gradients, computed here in one process as the reference."""
    mp.spawn(_unused_expert_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert 0 in ranks[0]["chosen"] and 0 not in ranks[1]["chosen"]
    local = []
    for rank in (0, 1):
        moe, direction = _steered_moe()
        _loss(moe(_rank_input(rank, direction))).backward()
        local.append({n: p.grad for n, p in moe.named_parameters()})
    assert local[1]["experts.w1"][0].abs().sum() == 0  # rank 1 alone gives expert 0 nothing
    for name in local[0]:
        expected = (local[0][name] + local[1][name]) / 2
        for rank in (0, 1):
            torch.testing.assert_close(ranks[rank]["grads"][name], expected, rtol=1e-5, atol=1e-7)


def _bias_model() -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(n_layers=2, n_heads=2, n_embd=16, context_window=16, n_experts=4, top_k=1, expert_hidden=16,
                         router_noise=False, balance="bias", bias_update_rate=0.1)  # fmt: skip
    return Transformer(config)


def _bias_batches(rank: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7 + rank)
    return [torch.randint(0, 128 * (rank + 1), (2, 16), generator=generator) for _ in range(2)]  # two micro-batches


def _bias_worker(rank: int, store: str, results: str) -> None:
    """Two micro-batches through the Trainer's DDP wrapper (the first without gradient sync), then the update."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = _bias_model()
    ddp = distributed.ddp(model, torch.device("cpu"))
    first, second = _bias_batches(rank)
    with ddp.no_sync():
        ddp(first, first).loss.backward()
    ddp(second, second).loss.backward()
    model.update_balance_biases(distributed.all_reduce)
    torch.save([block.moe.router.balance_bias for block in model.blocks], f"{results}/bias{rank}.pt")
    dist.destroy_process_group()


def _biases_after(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    model = _bias_model()
    for idx in batches:
        model(idx, idx)
    model.update_balance_biases()
    return [block.moe.router.balance_bias for block in model.blocks]


def test_ranks_move_their_balance_biases_by_the_global_loads(tmp_path):
    """Every rank ends with the bias that one process computes from all ranks' micro-batches."""
    mp.spawn(_bias_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"bias{r}.pt", weights_only=True) for r in (0, 1)]
    expected = _biases_after(_bias_batches(0) + _bias_batches(1))
    for rank in ranks:
        for got, want in zip(rank, expected):
            assert torch.equal(got, want)
    assert any(not torch.equal(a, b) for a, b in zip(_biases_after(_bias_batches(0)), expected))  # local loads differ


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def test_a_killed_rank_fails_the_job_cleanly_and_the_run_resumes(toy_dataset):
    fields = [*SAME_MATH, "--set", "max_steps=300", "--set", "checkpoint_every=5", "--set", "eval_every=100"]
    folder = data_dir() / "checkpoints" / "rank-killed"
    job = train(2, toy_dataset, "rank-killed", *fields, wait=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not list_checkpoints(folder) and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    workers = [pid for agent in [job.pid] for pid in _children(agent)]
    rank1 = next(pid for pid in workers if _rank_of(pid) == 1)
    killed_at = time.monotonic()
    os.kill(rank1, signal.SIGKILL)
    output, _ = job.communicate(timeout=TIMEOUT_S)
    assert job.returncode != 0, output  # the job fails, it does not hang
    assert time.monotonic() - killed_at < TIMEOUT_S
    latest = load_checkpoint(list_checkpoints(folder)[-1])
    assert 5 <= latest["step"] < 300
    # resume with another world size (1 process): data, optimizer and schedules continue from the checkpoint
    resumed = train(1, toy_dataset, "rank-killed", *fields, "--resume")
    assert resumed["step"].tolist() == list(range(1, 301))
    assert resumed["loss"].map(pd.notna).all()


def test_notebook_02_trains_with_two_processes(tmp_path, monkeypatch):
    """nproc=2: notebook 02 launches torchrun, streams it, and carries on with the metrics and checkpoint."""
    from .test_notebooks import run_notebook

    if not os.environ.get("MOELAB_CORPUS_MIRROR"):
        pytest.skip("needs MOELAB_CORPUS_MIRROR (the shared Machado mirror) to run offline")
    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path / "reports"))
    run = tmp_path / "reports" / "ddp"
    run_notebook("01_data_prep.ipynb", run)
    nb = run_notebook("02_train.ipynb", run, run_name="ddp", nproc=2, compare=False)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "--nproc_per_node=2" in text and "on 2 process(es)" in text
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert metrics["step"].max() == 30 and metrics["val_bpb"].notna().sum() == 3
    assert (run / "figures" / "training_curves.png").is_file()


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(toy_dataset, monkeypatch):
    import moelab.train.trainer as train_module
    from moelab import preset

    three_ranks = train_module.distributed.DistInfo(rank=0, world_size=3, local_rank=0)
    monkeypatch.setattr(train_module.distributed, "setup", lambda device: (three_ranks, device))
    p = preset("tiny")  # batches of 8 sequences
    with pytest.raises(ValueError, match=r"batch_size: with 3 processes .* the batch has \[8, 8, 8\] sequences"):
        train_module.Trainer(p.model, p.train, "uneven", dataset=toy_dataset)
