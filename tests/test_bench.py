"""The benchmark's arithmetic, against counts taken from the modules, and a short run of it."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from moelab import Transformer
from moelab.bench.cli import main
from moelab.bench.configs import CONFIGS, DEFAULT_CONFIGS, TARGETS
from moelab.bench.flops import matmul_params_per_token, train_flops_per_token
from moelab.bench.table import apply_targets
from moelab.bench.training import _step_memory
from moelab.generate.compiled import CompiledDecoder
from moelab.timing import paired_ratio


@pytest.mark.parametrize("name", DEFAULT_CONFIGS)
def test_flop_count_uses_the_matmul_weights_a_token_passes_through(name):
    config = CONFIGS[name].model_config()
    model = Transformer(config)
    # independent count from the modules: every Linear / expert matrix, routed experts at top_k / n
    per_expert = model.blocks[0].moe.experts.w1[0].numel() + model.blocks[0].moe.experts.w2[0].numel()
    counted = model.head.weight.numel()
    for block in model.blocks:
        counted += block.attn.qkv.weight.numel() + block.attn.proj.weight.numel()
        counted += block.moe.router.gate.weight.numel() + block.moe.router.noise.weight.numel()
        counted += config.top_k * per_expert
        if block.moe.common is not None:
            counted += block.moe.common.fc.weight.numel() + block.moe.common.proj.weight.numel()
    assert matmul_params_per_token(config) == counted
    window = CONFIGS[name].window
    assert train_flops_per_token(config, window) == 6 * counted + 12 * config.n_layers * config.n_embd * window


@pytest.mark.parametrize("tie_weights", [True, False])
def test_decode_reads_each_active_weight_once(tie_weights):
    """By hand from the config: what one token's forward touches at batch 1, in fp32 bytes."""
    from moelab.bench.generation import decode_bytes_per_token
    from moelab.config.model import ModelConfig

    c = ModelConfig(n_layers=2, n_heads=2, n_embd=32, context_window=16, n_experts=4, top_k=2, n_common_experts=1,
                    expert_hidden=64, pos_encoding="learned", tie_weights=tie_weights)  # fmt: skip
    d, h = c.n_embd, c.expert_hidden
    attention = (3 * d * d + 3 * d) + (d * d + d)
    norms = 2 * (2 * d)
    router = c.n_experts * d  # (the noise weights are for training only)
    expert = d * h + h + h * d + d
    per_layer = attention + norms + router + c.top_k * expert + c.n_common_experts * expert
    head = c.vocab_size * (d + 1) + (0 if tie_weights else d)  # the table and its bias (+ one embedding row if untied)
    expected = c.n_layers * per_layer + 2 * d + head + d  # final norm, one position row
    assert decode_bytes_per_token(Transformer(c)) == 4 * expected


def test_gemv_bandwidth_is_bytes_over_time_and_layouts_compare_as_time_over_time(monkeypatch):
    import moelab.bench.generation as bench

    seen = {}

    def fake_interleaved(variants, repeats, steps, device, warmup):
        seen.update(variants)
        return {"xw": [0.5, 0.5, 0.5], "linear": [1.0, 0.75, 0.6]}

    monkeypatch.setattr(bench, "interleaved", fake_interleaved)
    result = bench.gemv_bandwidth(total_mib=2, rows=256, cols=1024)  # two 1 MiB matrices
    assert set(seen) == {"xw", "linear"}
    assert result["bytes_per_s"] == 2 * 2**20 / 0.5
    assert result["linear_over_xw"] == 1.5  # the median of 2.0, 1.5, 1.2


def test_cpu_targets_apply_per_config_and_bf16_only_with_amx():
    rows = [  # (config, measure, value)
        ("A", "MFU fp32", 0.62),
        ("B", "MFU fp32", 0.62),  # B's goal is 0.75
        ("C", "MFU fp32", 0.10),  # no goal for C
        ("C", "MoE overhead fp32", 1.5),
        ("B", "MoE overhead fp32", 1.05),
        ("B", "generation tok/s (KV cache) window 256 batch 1", 410.0),
        ("B", "generation tok/s (KV cache) window 256 batch 8", 10.0),  # the goal is batch 1's
        ("-", "sampling B/s past the window (slide) cpu model, 300 bytes", 900.0),
        ("B", "train speedup bf16 vs fp32", 2.6),
    ]
    table = pd.DataFrame([{"config": c, "measure": m, "value": v, "target": "", "meets": ""} for c, m, v in rows])
    with_amx = apply_targets(table, TARGETS, amx=True)
    assert list(with_amx["meets"]) == ["yes", "no", "", "", "yes", "yes", "", "no", "yes"]
    assert list(with_amx["target"])[:2] == [">= 0.6", ">= 0.75"]
    without_amx = apply_targets(table, TARGETS, amx=False)
    assert without_amx["meets"].iloc[-1] == "" and list(without_amx["meets"])[:-1] == list(with_amx["meets"])[:-1]


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def test_training_step_memory_covers_gradients_and_adam_state():
    model = Transformer(CONFIGS["A"].model_config())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = _step_memory("A", "moelab", "fp32", "cpu")
    assert 3 * param_bytes <= peak < 40 * param_bytes  # grads + two moments, plus activations


def test_short_benchmark_run_writes_its_table(tmp_path, capsys):
    main(
        [
            "--configs",
            "A",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--new-tokens",
            "3",
            "--sampling-bytes",
            "100",
            "--skip",
            "memory",
            "--out",
            str(tmp_path),
        ]
    )
    table = pd.read_csv(tmp_path / "bench.csv")
    measures = set(table["measure"])
    for expected in (
        "matmul peak GFLOP/s fp32",
        "train tok/s naive fp32",
        "train tok/s moelab fp32",
        "train speedup fp32 vs naive",
        "MoE overhead fp32",
        "MFU fp32",
        "generation tok/s (KV cache) window 256 batch 1",
        "generation exact window 128 batch 8",
        "sampling B/s past the window (slide) cpu model, 100 bytes",
        "sampling slide speedup over crop cpu model, 100 bytes",
        "GEMV weight bandwidth GB/s (x·W, 64 MiB fp32)",
        "decode bandwidth bound tok/s window 256 batch 1",
        "decode share of bandwidth bound window 128 batch 1",
    ):
        assert expected in measures
    compiled = {
        "generation tok/s (compiled step) window 256 batch 1",
        "generation tok/s (compiled step, compile included) window 128 batch 1",
        "compiled step compile seconds window 256 batch 1",
        "compiled step break-even tokens window 128 batch 1",
        "sampling B/s past the window (slide, compiled step) cpu model, 100 bytes",
        "compiled step speedup (slide) cpu model, 100 bytes",
    }
    assert compiled <= measures if CompiledDecoder.available() else not compiled & measures  # no compiler: no rows
    measured_on = table.set_index("measure")["threads"]  # generation and sampling: --generation-threads (1)
    assert measured_on["sampling B/s past the window (slide) cpu model, 100 bytes"] == 1
    assert measured_on["decode bandwidth bound tok/s window 256 batch 1"] == 1
    exact = table["measure"].str.startswith("generation exact") | table["measure"].str.startswith("compiled step exact")
    # 2 windows x 2 batches; 2 + 1 compiled, where Inductor compiles
    assert exact.sum() == 4 + 3 * CompiledDecoder.available() and (table.loc[exact, "value"] == 1.0).all()
    assert not table["measure"].str.contains("compiled").loc[table["measure"].str.endswith("batch 8")].any()
    assert (table["value"] > 0).all()
    assert (tmp_path / "bench.png").stat().st_size > 0 and "MoE overhead" in (tmp_path / "bench.md").read_text()
    assert "train speedup fp32 vs naive" in capsys.readouterr().out


def test_where_nothing_compiles_the_benchmark_leaves_the_compiled_rows_out(monkeypatch):
    from moelab.bench.generation import bench_sampling
    from tests.test_compiled_decode import without_a_compiler

    without_a_compiler(monkeypatch)
    with pytest.warns(RuntimeWarning, match="could not compile"):
        rows = bench_sampling(torch.device("cpu"), repeats=1, new_bytes=40)
    measures = [row["measure"] for row in rows]
    assert "sampling B/s past the window (slide) cpu model, 40 bytes" in measures
    assert not [m for m in measures if "compiled" in m]  # the uncompiled speed is not shown as the compiled one


def test_muon_precision_benchmark_times_both_newton_schulz_precisions():
    """tools/muon_bench.py --smoke: one line per model, with both step times and their ratio."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "tools" / "muon_bench.py"), "--smoke", "--repeats", "1"],
                          capture_output=True, text=True, env={"PYTHONPATH": str(root / "lib"), "PATH": ""}, check=True)  # fmt: skip
    lines = done.stdout.splitlines()
    assert "Muon iterates in" in lines[0]
    rows = [re.search(r"in bf16 (\d+) ms, in float32 (\d+) ms; bf16 / float32 ([\d.]+)", line) for line in lines[1:]]
    assert len(rows) == 2 and all(rows), done.stdout
