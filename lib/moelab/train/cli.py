"""The command line of the Trainer.

``python -m moelab.train --preset cpu --run-name NAME [--resume] [--config FILE.yaml] [--set field=value ...]``

Builds the configs from a preset and overrides (:func:`moelab.config.presets.build_configs`; the
model takes the dataset's vocabulary unless ``--set vocab_size=`` says otherwise) and
runs :class:`moelab.train.trainer.Trainer`; under ``torchrun`` every process runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moelab.train import distributed
from moelab.runs.checkpoint import CheckpointError
from moelab.data import CorpusError, with_dataset_vocab
from moelab.config.presets import build_configs, preset
from moelab.train.trainer import Trainer, TrainingDiverged


def parse_value(text: str) -> Any:
    """A --set value: int, float, bool, null, or a YAML list; else the string."""
    import yaml

    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    value = yaml.safe_load(text)
    return value if value is not None or text.lower() in ("null", "none", "~") else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moelab train", description="Train a moelab model.")
    parser.add_argument("--preset", default="cpu", help="seed, cpu, long or tiny (default: cpu, 10 minutes)")
    parser.add_argument("--run-name", required=True, help="names data/checkpoints/<run>/ and reports/<run>/")
    parser.add_argument("--dataset", help="a prepared dataset under data/processed/ (default: the preset's, e.g. machado)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run's checkpoints and metrics first")
    parser.add_argument("--config", type=Path, help="a YAML file of field: value overrides")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override one field (repeatable)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else the CPU; the default), cpu, cuda, cuda:1 ..."
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="N",
        help="end this session after N steps with a checkpoint (the budget stays the run's; --resume continues)",
    )
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            parser.error(f"{args.config} must hold a mapping of field: value")
        overrides.update(loaded)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[field.strip()] = parse_value(value.strip())
    try:
        dataset = args.dataset or preset(args.preset).dataset
        model_config, train_config = build_configs(args.preset, with_dataset_vocab(overrides, dataset))
        trainer = Trainer(
            model_config,
            train_config,
            args.run_name,
            dataset=dataset,
            device=args.device,
            progress=not args.no_progress,
        )
        result = trainer.fit(resume=args.resume, overwrite=args.overwrite, stop_after_steps=args.stop_after_steps)
    except (ValueError, OSError, CheckpointError, CorpusError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    if trainer.dist.is_main:
        print(
            f"{result.run_name}: {result.steps} steps, {result.tokens:,} tokens in {result.elapsed_s / 60:.1f} min "
            f"on {trainer.dist.world_size} process(es); val {result.val_loss:.4f} nats = {result.val_bpb:.4f} "
            f"bits/byte; checkpoint {result.checkpoint}"
        )
    return 0
