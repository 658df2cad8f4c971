"""Sweeps: named variants × seeds, trained one at a time, summarized with confidence intervals.

``python -m moelab.sweep SPEC.yaml`` (or a built-in study's name) and
``run_sweep(spec)`` train every (seed, variant) run of a spec (:mod:`moelab.sweep.spec`)
seed-major, so an interrupted sweep still holds every variant for the seeds it finished.
Running a sweep again continues where it stopped: a finished run with the same configs
is never retrained, a run killed midway resumes from its last checkpoint. Runs are
ordinary runs (``reports/<sweep>-<variant>-s<seed>/``, listed by ``python -m moelab runs``);
the sweep's own outputs go to ``reports/sweeps/<name>/``:

* ``spec.yaml``: the spec as run, resolved (every config field written out: :func:`write_spec`);
* ``results.csv``: one row per finished run (variant, seed, run, val_bpb, steps, tokens,
  wall_s, tokens_per_s, best_val_bpb, maxvio: the expert imbalance at the end);
* ``summary.csv``: one row per variant, its mean and 95% t-interval over seeds and its
  difference from the first variant paired by seed, with a verdict (:mod:`moelab.stats`);
* ``curves.csv`` and ``figures/``: validation curves and the summary as figures;
* ``README.md``: the summary, per-seed values and conclusions, where and how long it ran.

``--score FILE`` (:func:`score_runs`) scores every finished run's last checkpoint on one
text file, each with its own tokenizer, so every variant is measured on the same bytes
(the validation split in full, say, rather than the Trainer's fixed windows):
``score-<folder>-<file>.csv`` per run and ``…-summary.csv`` with intervals, also in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from moelab.runs.checkpoint import CheckpointError
from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig, config_diff
from moelab.data import CorpusError
from moelab.paths import atomic_write, reports_dir
from moelab.runs.registry import git_commit, process_alive, read_status
from moelab.runs.files import checkpoint_dir, latest_checkpoint, list_checkpoints, run_reports_dir
from moelab.stats import conclusions, shown_summary, summarize
from moelab.nn.moe.metrics import final_maxvio
from moelab.sweep.spec import SweepSpec, SweepSpecError, builtin_studies, load_spec

RESULT_COLUMNS = ["variant", "seed", "run", "val_bpb", "steps", "tokens", "wall_s", "tokens_per_s", "best_val_bpb", "maxvio"]


class SweepError(RuntimeError):
    """A sweep that cannot go on as asked (a run of another config in its place, a second process)."""


@dataclass
class SweepResult:
    spec: SweepSpec
    folder: Path
    results: pd.DataFrame  # one row per finished run
    summary: pd.DataFrame  # one row per variant (moelab.stats.SUMMARY_COLUMNS)
    curves: pd.DataFrame  # variant, seed, step, tokens, val_bpb at each evaluation
    trained: list[str] = field(default_factory=list)  # runs trained (or resumed) by this call

    def conclusions(self) -> list[str]:
        return conclusions(self.summary)


def sweep_dir(name: str) -> Path:
    return reports_dir() / "sweeps" / name


def plan(spec: SweepSpec) -> pd.DataFrame:
    """Every run of the sweep in training order (seed-major) with its state on disk."""
    rows = []
    for seed in spec.seeds:
        for variant in spec.variants:
            run = spec.run_name(variant, seed)
            rows.append({"seed": seed, "variant": variant, "run": run, "state": _state(spec, variant, seed)})
    return pd.DataFrame(rows, columns=["seed", "variant", "run", "state"])


def _state(spec: SweepSpec, variant: str, seed: int) -> str:
    """``finished``, ``resume`` (checkpoints of this config), ``new``, or ``conflict: ...`` (another config)."""
    run = spec.run_name(variant, seed)
    folder, checkpoints = run_reports_dir(run), list_checkpoints(checkpoint_dir(run))
    config_path = folder / "config.json"
    if not config_path.is_file():
        return "resume" if checkpoints else "new"
    recorded = json.loads(config_path.read_text())
    model, train = spec.configs(variant, seed)
    try:
        diff = {**config_diff(ModelConfig.from_dict(recorded["model"]), model),
                **config_diff(TrainConfig.from_dict(recorded["train"]), train)}  # fmt: skip
    except (KeyError, ValueError):
        diff = {"config": ("unreadable", "")}
    if recorded.get("dataset") != spec.dataset_of(variant):
        diff["dataset"] = (recorded.get("dataset"), spec.dataset_of(variant))
    if diff:
        return "conflict: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items())
    status = read_status(folder)["status"]
    if status == "running":
        return "running elsewhere"
    if status == "finished":
        return "finished"
    return "resume" if checkpoints else "new"


def run_sweep(
    spec: SweepSpec | dict | str | Path,
    *,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    figures: bool = True,
) -> SweepResult:
    """Train the sweep's runs that are not finished (one at a time), then summarize every finished run.

    ``overwrite``: retrain every run of the sweep from scratch (its earlier runs are deleted
    run by run as they are retrained). Without it, a run of the same name trained with
    other configs (an edited spec) is an error before any training: give the sweep another
    name or pass ``overwrite=True`` (``--overwrite``).
    """
    from tqdm.auto import tqdm

    from moelab.train.trainer import Trainer

    spec = load_spec(spec)
    todo = plan(spec)
    _check_plan(spec, todo, overwrite)
    folder = sweep_dir(spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    trained = []
    log_lines = os.environ.get("MOELAB_PROGRESS", "").strip().lower() == "log"
    with _lock(folder):
        write_spec(spec, folder / "spec.yaml")
        bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="run", disable=not progress or log_lines)
        for i, row in enumerate(todo.itertuples(), start=1):
            bar.set_postfix_str(row.run)
            if row.state == "finished" and not overwrite:
                print(f"[{i}/{len(todo)}] {row.run}: finished earlier, kept")
            else:
                how = "overwrite" if overwrite else row.state
                print(f"[{i}/{len(todo)}] {row.run}: training ({'resumes from its checkpoint' if how == 'resume' else 'new'})")
                model, train = spec.configs(row.variant, row.seed)
                trainer = Trainer(model, train, row.run, dataset=spec.dataset_of(row.variant), device=device, progress=progress)
                done = trainer.fit(resume=how == "resume", overwrite=how != "resume")
                trained.append(row.run)
                print(f"[{i}/{len(todo)}] {row.run}: {done.val_bpb:.4f} bits per byte, {done.elapsed_s / 60:.1f} min")
                write_tables(spec, folder)
            bar.update()
        bar.close()
    result = collect(spec, trained)
    write_tables(spec, folder, result)
    if figures:
        write_figures(result)
    write_readme(result)
    return result


def write_spec(spec: SweepSpec, path: Path) -> Path:
    """The spec, resolved (every config field written out), with a header saying how to re-run it."""
    header = (f"# Sweep {spec.name}, resolved at moelab {git_commit() or 'unknown'}: every config field is written\n"
              "# out, so `moelab sweep <this file>` trains exactly these runs whatever the presets say later.\n")
    text = header + yaml.safe_dump(spec.resolved(), sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _check_plan(spec: SweepSpec, todo: pd.DataFrame, overwrite: bool) -> None:
    busy = todo[todo["state"] == "running elsewhere"]
    if not busy.empty:
        raise SweepError(f"run {busy['run'].iloc[0]} is being trained by another process; wait for it or stop it")
    conflicts = todo[todo["state"].str.startswith("conflict")]
    if not conflicts.empty and not overwrite:
        first = conflicts.iloc[0]
        raise SweepError(
            f"sweep {spec.name!r}: {len(conflicts)} run(s) on disk were trained with other configs, "
            f"e.g. {first['run']} ({first['state'].removeprefix('conflict: ')}). Nothing was trained. "
            "Give the sweep another name, or pass overwrite=True (--overwrite) to retrain its runs."
        )


class _lock:
    """One process per sweep: ``reports/sweeps/<name>/lock`` holds the pid while it trains."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "lock"

    def __enter__(self) -> "_lock":
        if self.path.is_file():
            try:
                held = json.loads(self.path.read_text())
            except ValueError:  # a lock file cut short: its writer is gone
                held = {}
            if held.get("host") == socket.gethostname() and process_alive(held.get("pid")):
                raise SweepError(f"the sweep is already running in process {held['pid']}; one at a time on a machine")
        self.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def collect(spec: SweepSpec, trained: list[str] | None = None) -> SweepResult:
    """Results, summary and validation curves of the sweep's finished runs, from their files."""
    rows, curves = [], []
    for seed in spec.seeds:
        for variant in spec.variants:
            run = spec.run_name(variant, seed)
            if _state(spec, variant, seed) != "finished":
                continue
            status = read_status(run_reports_dir(run))
            wall = status.get("wall_s") or float("nan")
            rows.append({"variant": variant, "seed": seed, "run": run, "val_bpb": status.get("final_val_bpb"),
                         "steps": status.get("steps"), "tokens": status.get("tokens"), "wall_s": wall,
                         "tokens_per_s": (status.get("tokens") or 0) / wall, "best_val_bpb": status.get("best_val_bpb")})  # fmt: skip
            metrics = pd.read_parquet(run_reports_dir(run) / "metrics.parquet")
            rows[-1]["maxvio"] = final_maxvio(metrics)
            curves.append(metrics[["step", "tokens", "val_bpb"]].dropna(subset=["val_bpb"]).assign(variant=variant, seed=seed))
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    summary = summarize(results, variants=list(spec.variants))
    curve_table = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
        columns=["step", "tokens", "val_bpb", "variant", "seed"])  # fmt: skip
    return SweepResult(spec, sweep_dir(spec.name), results, summary, curve_table, list(trained or []))


def score_runs(spec: SweepSpec | dict | str | Path, path: str | Path, *, stride: int | None = None,
               device: str = "auto", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bits per byte of the text file ``path`` under each finished run's last checkpoint, with its own tokenizer.

    Returns one row per run and the summary per variant (95% intervals, paired by seed);
    both go to ``reports/sweeps/<name>/score-<folder>-<file>[-summary].csv`` and the sweep's
    README. Runs not finished are left out and named; the reference variant needs one.
    """
    from tqdm.auto import tqdm

    from moelab.evaluate.scoring import score_text

    spec, path = load_spec(spec), Path(path)
    _check_text_file(path)
    data, todo = path.read_bytes(), plan(spec)
    done = todo[todo["state"] == "finished"]
    reference = next(iter(spec.variants))
    if reference not in set(done["variant"]):
        raise SweepError(f"sweep {spec.name!r} has no finished run of its reference variant {reference!r}; train it first")
    if len(done) < len(todo):
        print(f"not finished, not scored: {', '.join(todo.loc[todo['state'] != 'finished', 'run'])}")
    rows = []
    for row in tqdm(list(done.itertuples()), desc=f"score {path.name}", unit="run", disable=not progress):
        checkpoint = latest_checkpoint(row.run)
        scored = score_text(checkpoint, data, stride=stride, device=device)
        rows.append({"variant": row.variant, "seed": row.seed, "run": row.run, "checkpoint": checkpoint.name, "file": str(path),
                     "bpb": scored.bits_per_byte, "bytes": scored.bytes, "tokens": scored.tokens})  # fmt: skip
    table = pd.DataFrame(rows)
    summary = summarize(table, metric="bpb", variants=[v for v in spec.variants if v in set(table["variant"])])
    folder = sweep_dir(spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"score-{path.resolve().parent.name}-{path.name}"
    for suffix, frame in (("", table), ("-summary", summary)):
        atomic_write(folder / f"{name}{suffix}.csv", lambda f, t=frame: f.write(t.to_csv(index=False).encode()))
    write_readme(collect(spec))
    return table, summary


def _check_text_file(path: Path) -> None:
    """A clear error for a path that is not a text file (a BPE dataset's split file holds token ids)."""
    if not path.is_file():
        raise SweepError(f"{path} is not a file to score; give a text file, e.g. data/processed/machado/val.bin")
    meta = path.parent / "meta.json"
    if path.suffix == ".bin" and meta.is_file() and json.loads(meta.read_text()).get("dtype", "uint8") != "uint8":
        raise SweepError(f"{path} holds token ids of another tokenizer, not text; score a bytes dataset's split "
                         "file (e.g. data/processed/machado/val.bin) or any UTF-8 text file")  # fmt: skip


def write_tables(spec: SweepSpec, folder: Path, result: SweepResult | None = None) -> None:
    """results.csv, summary.csv and curves.csv of the runs finished so far."""
    result = result or collect(spec)
    for name, table in (("results", result.results), ("summary", result.summary), ("curves", result.curves)):
        atomic_write(folder / f"{name}.csv", lambda f, t=table: f.write(t.to_csv(index=False).encode()))


def write_figures(result: SweepResult) -> list[Path]:
    """figures/summary.png (means with 95% CI bars) and figures/curves.png (validation curves, band over seeds)."""
    from moelab.sweep.plots import plot_sweep_curves, plot_sweep_summary

    out = result.folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if not result.results.empty:
        for name, fig in (("summary", plot_sweep_summary(result.summary, title=result.spec.name)),
                          ("curves", plot_sweep_curves(result.curves, title=result.spec.name))):  # fmt: skip
            fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
            paths.append(out / f"{name}.png")
    return paths


def write_readme(result: SweepResult) -> Path:
    """README.md of the sweep: the question, the command, where and how long it ran, the summary,
    the per-seed values, the conclusions in words and the figures."""
    spec, lines = result.spec, [f"# Sweep `{result.spec.name}`", "", result.spec.description, ""]
    lines += ["Re-run exactly these runs (spec.yaml lists every config field, so later preset changes do not alter it):", "",
              "```bash", f"moelab sweep reports/sweeps/{spec.name}/spec.yaml", "```", ""]  # fmt: skip
    if not result.results.empty:
        lines += [_where_and_how_long(result), "", "## Summary", "",
                  shown_summary(result.summary).to_markdown(index=False, floatfmt=".4f"), ""]  # fmt: skip
        for column, what in (("val_bpb", "validation bits per byte"), ("maxvio", "MaxVio at the end"),
                             ("tokens", "training tokens (not the same for every run)")):  # fmt: skip
            per_seed = result.results.pivot(index="seed", columns="variant", values=column)
            if per_seed.notna().any().any() and (column != "tokens" or result.results["tokens"].nunique() > 1):
                lines += [f"Per seed, {what}:", "", per_seed[[v for v in spec.variants if v in per_seed]].to_markdown(floatfmt=".4f"), ""]
        routed = [v for v in spec.variants if result.results.loc[result.results["variant"] == v, "maxvio"].notna().any()]
        if len(routed) >= 2 and routed[0] == next(iter(spec.variants)):  # the balance, compared the same way
            imbalance = summarize(result.results, metric="maxvio", variants=routed)  # a dense variant has none
            lines += ["MaxVio at the end (mean over layers; 0 = every expert equally loaded), compared the same way:", "",
                      imbalance.to_markdown(index=False, floatfmt=".4f"), ""]  # fmt: skip
        lines += ["## What the numbers say", "", *(f"- {line}" for line in result.conclusions()), ""]
        lines += _score_sections(result.folder, list(spec.variants))
        lines += [f"![{name}](figures/{name}.png)" for name in ("summary", "curves") if (result.folder / "figures" / f"{name}.png").is_file()]
    path = result.folder / "README.md"
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return path


def _score_sections(folder: Path, variants: list[str]) -> list[str]:
    """README sections of the sweep's ``score-*.csv`` tables (:func:`score_runs`)."""
    lines = []
    for summary_path in sorted(folder.glob("score-*-summary.csv")):
        table = pd.read_csv(summary_path.with_name(summary_path.name.replace("-summary.csv", ".csv")))
        summary = pd.read_csv(summary_path)
        per_seed = table.pivot(index="seed", columns="variant", values="bpb")
        scored = table["file"].iloc[0]
        lines += [f"## Scored on `{scored}`", "",
                  f"Every run's last checkpoint scored on the same {table['bytes'].iloc[0]:,} bytes of `{scored}`, "
                  "each with its own tokenizer, every token once (`--score`). Bits per byte:", "",
                  summary.to_markdown(index=False, floatfmt=".4f"), "", "Per seed:", "",
                  per_seed[[v for v in variants if v in per_seed]].to_markdown(floatfmt=".4f"), "",
                  *(f"- {line}" for line in conclusions(summary)), ""]  # fmt: skip
    return lines


def _where_and_how_long(result: SweepResult) -> str:
    """One sentence: the runs' CPU (or GPU) with how many runs each, torch, commit, and the sweep's span of wall time."""
    runs = [run_reports_dir(run) for run in result.results["run"]]
    configs = [json.loads((folder / "config.json").read_text()) for folder in runs]
    statuses = [read_status(folder) for folder in runs]
    start = min(pd.Timestamp(s["started"]) for s in statuses if s.get("started"))
    end = max(pd.Timestamp(s["ended"]) for s in statuses if s.get("ended"))
    devices = pd.Series([_device(config) for config in configs]).value_counts(sort=False)
    where = f" on {devices.index[0]}" if len(devices) == 1 else ": " + ", ".join(f"{n} on {d}" for d, n in devices.items())
    return (f"{len(runs)} runs{where}; torch {configs[0].get('torch')}, moelab {configs[0].get('git_commit')}: "
            f"{(end - start).total_seconds() / 60:.1f} minutes from the first start to the last end "
            f"({result.results['wall_s'].sum() / 60:.1f} of them training).")  # fmt: skip


def _device(config: dict) -> str:
    machine = config.get("hardware") or {}
    return machine.get("gpu") or f"{machine.get('cpu')} ({machine.get('threads')} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moelab sweep",
        description="Train a sweep (variants × seeds, one run at a time, resumable) and summarize it with "
        "95% confidence intervals into reports/sweeps/<name>/.",
    )
    parser.add_argument("spec", help=f"a spec file (.yaml) or a built-in study: {', '.join(builtin_studies())}")
    parser.add_argument("--overwrite", action="store_true", help="retrain every run of the sweep from scratch")
    parser.add_argument("--plan", action="store_true", help="print the runs and their state, train nothing")
    parser.add_argument("--score", metavar="FILE", help="train nothing: score every finished run's last checkpoint "
                        "on FILE (the same bytes for every tokenizer), e.g. data/processed/machado/val.bin")  # fmt: skip
    parser.add_argument("--stride", type=int, help="with --score: window stride in tokens (default: half the window)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.plan:
            print(plan(spec).to_string(index=False))
            return 0
        if args.stride is not None and not args.score:
            parser.error("--stride goes with --score")
        if args.score:
            _, summary = score_runs(spec, args.score, stride=args.stride, device=args.device, progress=not args.no_progress)
            print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print("\n".join(conclusions(summary)))
            print(f"written: {sweep_dir(spec.name)}")
            return 0
        result = run_sweep(spec, overwrite=args.overwrite, device=args.device, progress=not args.no_progress)
    except (SweepSpecError, SweepError, ValueError, CorpusError, CheckpointError) as err:
        parser.exit(2, f"error: {err}\n")
    pd.set_option("display.width", 160)
    print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("\n".join(result.conclusions()))
    print(f"written: {result.folder}")
    return 0
