"""The GPU path, as far as a CPU can check it: device choice, head-size padding, pinned
batches, the benchmark's card table and MFU, and imports without the notebook packages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moelab import ModelConfig, Transformer
from moelab.data.batches import to_device
from moelab.bench.cli import parse_args
from moelab.bench.configs import CONFIGS, GPU_TARGETS
from moelab.bench.flops import mfu, rated_bf16_peak, train_flops_per_token
from moelab.bench.table import apply_targets
from moelab.nn.attention import attention, padded_head_dim
from moelab.device import device_name, resolve_device
from moelab.config.presets import preset
from moelab.generate.loop import generate

LIB = Path(__file__).resolve().parent.parent / "lib"
NOTEBOOK_ONLY = ["pooch", "ipywidgets", "papermill", "jupyter", "jupyter_client", "nbformat", "nbconvert", "nbval",
                 "IPython", "ipykernel", "traitlets"]


def test_resolve_device_names():
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert device_name("cpu") == "cpu"
    for bad in ("gpu", "mps", "cuda:x", "tpu", ""):
        with pytest.raises(ValueError, match="device: must be one of auto, cpu, cuda, cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU here"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("head_dim", [257, 12, 8])
def test_padded_attention_equals_unpadded_with_gradients(head_dim):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grads = []
    outs = []
    for pad in (False, True):
        for t in (q, k, v):
            t.grad = None
        y = attention(q, k, v, pad, is_causal=True)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y)
        grads.append([t.grad.clone() for t in (q, k, v)])
    assert outs[1].shape == outs[0].shape
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert padded_head_dim(257) == 264 and padded_head_dim(256) == 256


def test_model_with_forced_padding_matches_the_plain_model():
    """Head size 257 (the seed's), padded to 264 inside SDPA: same logits, loss gradients, and cached generation."""
    config = ModelConfig(n_layers=1, n_heads=1, n_embd=257, context_window=8, n_experts=2, top_k=1, expert_hidden=16,
                         router_noise=False)
    torch.manual_seed(0)
    model = Transformer(config).double()
    idx = torch.randint(0, 256, (2, 8))
    results = []
    for pad in (False, True):
        model.set_padding(head_dim=pad)
        model.zero_grad()
        out = model(idx, idx)
        out.loss.backward()
        results.append((out.logits.detach(), model.blocks[0].attn.qkv.weight.grad.clone()))
        with torch.no_grad():
            results[-1] += (generate(model.eval(), idx[:, :3], 4, temperature=0.0),)
        model.train()
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-10)
    assert torch.equal(results[1][2], results[0][2])


def test_to_device_on_cpu_is_a_plain_copy():
    batch = torch.arange(6).view(2, 3)
    assert torch.equal(to_device(batch, torch.device("cpu")), batch)


@pytest.mark.parametrize(
    "name, card, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756),
        ("NVIDIA H100 NVL", "H100 NVL", 835),
        ("NVIDIA H200", "H200", 989),
        ("NVIDIA A100-SXM4-80GB", "A100", 312),
        ("NVIDIA L4", "L4", 121),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165),
    ],
)
def test_rated_peak_by_card_name(name, card, tflops):
    assert rated_bf16_peak(name) == (card, tflops * 1e12)


def test_unknown_card_has_no_rated_peak():
    assert rated_bf16_peak("NVIDIA L40S") is None and rated_bf16_peak("Tesla T4") is None


def test_mfu_arithmetic_for_the_seed_model():
    bench = CONFIGS["seed"]
    seed = preset("seed").model
    config = bench.model_config()
    for field in ("n_layers", "n_heads", "n_embd", "context_window", "n_experts", "top_k", "n_common_experts"):
        assert getattr(config, field) == getattr(seed, field), field
    assert (bench.batch, bench.window) == (preset("seed").train.batch_size, seed.context_window)
    flops = train_flops_per_token(config, bench.window)
    # 2000 steps of 64 × 32 tokens in 100 s on an H100 SXM
    tokens_per_s = 2000 * 64 * 32 / 100
    assert mfu(tokens_per_s, flops, 989e12) == pytest.approx(tokens_per_s * flops / 989e12)
    assert 1.3e9 < flops < 1.5e9  # 6 × ~229 M active matmul weights


def test_gpu_targets_fill_the_table():
    import pandas as pd

    table = pd.DataFrame(
        [
            {"config": "seed", "measure": "MoE overhead bf16", "value": 2.09, "target": "", "meets": ""},
            {"config": "seed-64k", "measure": "MoE overhead bf16", "value": 1.2, "target": "", "meets": ""},
            {"config": "seed", "measure": "MFU bf16 vs rated peak (H100 SXM)", "value": 0.13, "target": "", "meets": ""},
            {"config": "seed-64k", "measure": "MFU bf16 vs rated peak (H100 SXM)", "value": 0.25, "target": "", "meets": ""},
            {"config": "seed-32k", "measure": "MFU bf16 vs rated peak (H100 SXM)", "value": 0.2, "target": "", "meets": ""},
            {"config": "seed", "measure": "train tok/s moelab bf16", "value": 5.0, "target": "", "meets": ""},
        ]
    )
    out = apply_targets(table, GPU_TARGETS)
    assert list(out["meets"]) == ["no", "yes", "yes", "no", "", ""]
    assert list(out["target"]) == ["<= 1.3", "<= 1.3", ">= 0.12", ">= 0.3", "", ""]


def test_bench_arguments():
    args = parse_args(["--configs", "A", "seed", "--device", "cpu"])
    assert args.configs == ["A", "seed"] and args.device == torch.device("cpu")
    assert parse_args([]).configs == ["A", "B", "C"]
    with pytest.raises(SystemExit):
        parse_args(["--device", "gpu"])
    with pytest.raises(SystemExit):
        parse_args(["--configs", "D"])


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    block = "import sys\nfor name in %r:\n    sys.modules[name] = None\n" % NOTEBOOK_ONLY
    env = {"PYTHONPATH": str(LIB), "PATH": "/usr/bin:/bin", "MOELAB_PROGRESS": "log"}
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, env=env, timeout=300)


def test_core_library_imports_without_notebook_packages():
    code = (
        "import moelab, moelab.nn.model, moelab.train.trainer, moelab.train, moelab.bench, moelab.evaluate, "
        "moelab.evaluate.scoring, moelab.generate.sampling, moelab.train.precision, moelab.data, moelab.runs.checkpoint\n"
        "import runpy\n"
        "for module in ('moelab.train', 'moelab.bench', 'moelab.evaluate'):\n"
        "    sys.argv = [module, '--help']\n"
        "    try:\n"
        "        runpy.run_module(module, run_name='__main__')\n"
        "    except SystemExit as err:\n"
        "        assert err.code == 0, (module, err.code)\n"
        "try:\n    import pooch\nexcept ImportError:\n    print('blocked ok')\n"
    )
    result = _run_blocked(code)
    assert result.returncode == 0, result.stderr
    assert "blocked ok" in result.stdout and "--device" in result.stdout


def test_trainer_records_and_prints_its_device(toy_dataset, capsys):
    from moelab import Trainer
    from moelab.paths import reports_dir
    from moelab.config.presets import build_configs

    model_config, train_config = build_configs("tiny", {"max_steps": 2, "eval_every": 2, "checkpoint_every": 2})
    with pytest.raises(ValueError, match="device: must be one of"):
        Trainer(model_config, train_config, "gpu-dev", dataset=toy_dataset, device="gpu")
    trainer = Trainer(model_config, train_config, "gpu-dev", dataset=toy_dataset, device="cpu", progress=True)
    trainer.fit(overwrite=True)
    info = json.loads((reports_dir() / "gpu-dev" / "config.json").read_text())
    assert info["device"] == "cpu" and info["device_name"] == "cpu"
    assert "device cpu" in capsys.readouterr().out


def test_train_cli_refuses_an_unknown_device(toy_dataset, capsys):
    from moelab.train.cli import main

    assert main(["--preset", "tiny", "--run-name", "gpu-bad", "--dataset", toy_dataset, "--device", "tpu"]) == 2
    assert "device: must be one of" in capsys.readouterr().err


# ---------------------------------------------------------------------------- CUDA graphs


def _blocker(device="cuda", precision="bf16", distributed=False, model=None, **train):
    from moelab.config.train import TrainConfig
    from moelab.train.cuda_graph import graph_blocker
    from moelab.train.optim import make_optimizer

    model_config = model or ModelConfig(n_layers=1, n_embd=16, n_heads=2, n_experts=4, expert_hidden=32)
    train_config = TrainConfig(**train)
    optimizer = make_optimizer(Transformer(model_config), train_config, torch.device("cpu"))
    return graph_blocker(model_config, train_config, torch.device(device), precision, optimizer, distributed)


def test_graph_blocker_names_what_keeps_a_step_out_of_a_cuda_graph():
    assert _blocker() is None  # bf16 MoE with fused AdamW on CUDA: graphed
    assert _blocker(model=ModelConfig(n_layers=1, n_embd=16, n_heads=2, n_experts=0, n_common_experts=1), precision="fp32") is None
    assert _blocker(device="cpu") == "not on CUDA"
    assert _blocker(cuda_graphs=False) == "cuda_graphs=false"
    assert _blocker(compile=True) == "torch.compile is on"
    assert "DDP" in _blocker(distributed=True)
    assert _blocker(grad_accum_steps=2) == "gradient accumulation"
    assert "Muon" in _blocker(optimizer="muon")
    assert "capacity" in _blocker(model=ModelConfig(n_layers=1, n_embd=16, n_heads=2, n_experts=4, capacity_factor=1.0))
    assert "fp32 experts" in _blocker(precision="fp32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_moe_training_step_never_waits_for_the_gpu():
    """Forward and backward of a bf16 MoE on CUDA with no host synchronization (what a CUDA graph needs)."""
    torch.manual_seed(0)
    config = ModelConfig(n_layers=2, n_embd=36, n_heads=3, n_experts=6, top_k=2, n_common_experts=1, context_window=16)
    model = Transformer(config).cuda().train()
    x = torch.randint(0, 256, (4, 16), device="cuda")
    model(x, x)  # first call: lazy setup may synchronize
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", torch.bfloat16):
            out = model(x, x, record_routing=True)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_training_equals_eager_training(toy_dataset):
    """The Trainer with and without CUDA graphs: the same losses step by step (no dropout, no router
    noise, so no random numbers; bf16 and atomic adds leave rounding differences), and the window
    schedule's shape changes are captured anew."""
    from moelab import Trainer
    from moelab.config.presets import build_configs

    losses = {}
    for graphs in (False, True):
        model, train = build_configs("tiny", {"max_steps": 24, "log_every": 1, "eval_every": 24, "checkpoint_every": 24,
                                              "router_noise": False, "dropout": 0.0, "precision": "bf16",
                                              "cuda_graphs": graphs})
        trainer = Trainer(model, train, f"graphs-{graphs}", dataset=toy_dataset, device="cuda", progress=False)
        metrics = trainer.fit(overwrite=True).metrics
        assert (trainer.graphed is not None) == graphs
        losses[graphs] = metrics.set_index("step")[["loss", "grad_norm", "window"]]
    assert losses[True]["window"].nunique() > 1  # several shapes, several captures
    for column, tolerance in (("loss", 5e-3), ("grad_norm", 5e-2)):  # a frozen lr or a stale batch would show
        torch.testing.assert_close(torch.tensor(losses[True][column].values), torch.tensor(losses[False][column].values),
                                   rtol=tolerance, atol=0.0)
    assert losses[True]["loss"].iloc[-1] < losses[True]["loss"].iloc[0] - 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_with_a_nonfinite_loss_changes_nothing(toy_dataset):
    """A graphed step whose loss is NaN stops training with TrainingDiverged and leaves the weights as they were."""
    from moelab import Trainer
    from moelab.config.presets import build_configs
    from moelab.train.trainer import TrainingDiverged

    model, train = build_configs("tiny", {"max_steps": 6, "precision": "bf16", "cuda_graphs": True})
    trainer = Trainer(model, train, "graphs-nan", dataset=toy_dataset, device="cuda", progress=False)
    original = trainer.__class__._train_step
    weights = {}

    def poisoned(self):  # at the third step (a graph replay) the loss becomes NaN: the final norm's gain is NaN
        if self.step == 2:
            weights.update({n: p.detach().clone() for n, p in self.model.named_parameters()})
            with torch.no_grad():
                self.model.ln_f.weight.fill_(float("nan"))
        return original(self)

    trainer._train_step = poisoned.__get__(trainer)
    with pytest.raises(TrainingDiverged):
        trainer.fit(overwrite=True)
    assert trainer.graphed is not None
    for name, p in trainer.model.named_parameters():
        if name != "ln_f.weight":
            torch.testing.assert_close(p.detach(), weights[name], rtol=0, atol=0)


# ---------------------------------------------------------------------------- aligned matmuls


@pytest.mark.parametrize("d_in, d_out", [(1028, 257), (12, 20), (16, 3), (8, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_padded_linear_equals_unpadded_with_gradients(d_in, d_out, bias):
    """linear(..., align=8) pads the widths (as on CUDA in bf16 for n_embd 1028): same output and gradients."""
    from moelab.nn.aligned import linear

    torch.manual_seed(0)
    x = torch.randn(2, 5, d_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d_out, d_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d_out, dtype=torch.float64, requires_grad=True) if bias else None
    results = []
    for align in (False, True):
        y = linear(x, w, b, align=8 if align else 1)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
                                    [t for t in (x, w, b) if t is not None])
        results.append([y, *grads])
    assert results[1][0].shape == (2, 5, d_out)
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_padded_linear_under_autocast_keeps_the_autocast_dtype():
    from moelab.nn.aligned import linear

    x, w, b = torch.randn(6, 12), torch.randn(20, 12), torch.randn(20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded, plain = linear(x, w, b, align=8), torch.nn.functional.linear(x, w, b)
    assert padded.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(padded.float(), plain.float(), rtol=2e-2, atol=2e-2)
