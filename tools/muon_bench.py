"""What Muon's Newton–Schulz precision costs a training step on this machine: bf16 against float32.

    PYTHONPATH=lib python tools/muon_bench.py [--repeats 3] [--smoke]

For the ``cpu`` preset's language model and the pretrained forecaster's model, at their own
batch (full context windows), one training step as they train (forward, backward, clipping,
Muon with AdamW) with the Newton–Schulz iteration in bf16 and in float32, interleaved
(A B A B …); then the ratio bf16 / float32 (median over the paired rounds). The optimizer
iterates in :func:`moelab.train.optim.newton_schulz_dtype` of the device: bf16 only where
the device multiplies bf16 natively (an AMX or AVX512-BF16 CPU, a CUDA GPU of compute
capability 8.0+).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from moelab.config.presets import build_configs
from moelab.forecast.pretrain import PretrainConfig
from moelab.nn.model import Transformer
from moelab.runs.registry import hardware
from moelab.timing import interleaved, paired_ratio
from moelab.train.optim import make_optimizer, newton_schulz_dtype
from moelab.train.precision import bf16_support
from moelab.train.step import TrainStep

DTYPES = {"bf16": torch.bfloat16, "float32": torch.float32}


def models(smoke: bool) -> dict[str, tuple[Transformer, int]]:
    """The models to time, each with its training batch size (sequences of a full window)."""
    lm, train = build_configs("cpu", {"n_layers": 1} if smoke else {})
    forecaster = PretrainConfig(model={**PretrainConfig().model, **({"n_layers": 1} if smoke else {})})
    return {
        "cpu preset (language model)": (Transformer(lm), 2 if smoke else train.batch_size),
        "pretrained forecaster": (Transformer(forecaster.model_config()), 2 if smoke else forecaster.batch_size),
    }


def step_fns(model: Transformer, batch: int) -> dict[str, object]:
    """One training step per Newton–Schulz precision, each with its own copy of the optimizer."""
    train = build_configs("cpu", {})[1]
    tokens = torch.randint(model.config.vocab_size, (batch, model.config.context_window + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    fns = {}
    for name, dtype in DTYPES.items():
        optimizer = make_optimizer(model, train, torch.device("cpu"))
        optimizer.muon.ns_dtype = dtype
        step = TrainStep(model, optimizer, grad_clip=train.grad_clip)
        fns[name] = lambda step=step: step([(x, y)], lr=1e-5)  # a small rate: the model hardly moves between rounds
    return fns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="one layer, batch 2: checks the script")
    args = p.parse_args()
    cpu = torch.device("cpu")
    print(f"{hardware()['cpu']}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{bf16_support(cpu)[2]}; Muon iterates in {newton_schulz_dtype(cpu)} here")  # fmt: skip
    for label, (model, batch) in models(args.smoke).items():
        times = interleaved(step_fns(model, batch), args.repeats, 1, cpu, warmup=1)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        ratio = paired_ratio(times["bf16"], times["float32"])
        print(f"{label}, batch {batch} × {model.config.context_window}: training step with Newton–Schulz in bf16 "
              f"{ms['bf16']:.0f} ms, in float32 {ms['float32']:.0f} ms; bf16 / float32 {ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
