"""The main job: the four notebooks in order with papermill, then the run's report.

``python -m moelab.pipeline RUN [-f params.yaml] [--force]`` (what ``make run`` calls)
executes ``01_data_prep → 02_train → 03_expert_utilization → 04_sampling`` into
``reports/<RUN>/`` and ends with :func:`moelab.report.write_report`.

A stage is skipped when it is up to date: its executed notebook exists and the
fingerprint of its inputs (the notebook, its parameters, the moelab source, the
profile, and the previous stage's fingerprint) equals the one recorded in
``reports/<RUN>/pipeline.json`` when it last succeeded. So a re-run after a failure
resumes at the failed stage, editing notebook 03 re-runs 03 and 04, and changing
the library re-runs everything. A failing stage stops the pipeline with the notebook's
path and the failing cell; earlier stages' outputs stay as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .notebook import resolve_profile
from .paths import atomic_write, check_run_name, project_root, reports_dir, sha256_file
from .report import duration, write_report

STAGES = ("01_data_prep", "02_train", "03_expert_utilization", "04_sampling")
KERNEL = "moelab"


@dataclass
class StageResult:
    stage: str
    status: str  # "ran" or "skipped"
    seconds: float
    notebook: Path


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook file and the failing cell."""


def stage_parameters(stage: str, run: str, params: dict[str, Any]) -> dict[str, Any]:
    """What papermill injects: the YAML parameters, and the run name where the notebook takes one."""
    values = dict(params)
    if stage != "01_data_prep":
        values["run_name"] = run
    if stage == "02_train":
        values.setdefault("if_exists", "overwrite")  # the pipeline owns its run: a re-run retrains it
    return values


def source_fingerprint() -> str:
    """sha256 over the moelab package's source files (what the notebooks import)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".csv") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_folder(run: str) -> Path:
    """Where a run's notebooks and results go; the tiny profile's runs are named ``<run>-tiny``."""
    return reports_dir() / (f"{run}-tiny" if resolve_profile("default") == "tiny" else run)


def run_pipeline(
    run: str = "default",
    params: dict[str, Any] | None = None,
    *,
    force: bool = False,
    notebooks_dir: Path | None = None,
    log=print,
) -> list[StageResult]:
    import papermill

    check_run_name(run, "run")
    params = params or {}
    notebooks = Path(notebooks_dir) if notebooks_dir is not None else project_root() / "notebooks"
    folder = run_folder(run)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "pipeline.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    code = source_fingerprint()
    profile = resolve_profile("default")
    declared = {stage: papermill.inspect_notebook(str(notebooks / f"{stage}.ipynb")) for stage in STAGES}
    unknown = sorted(set(params) - {name for names in declared.values() for name in names})
    if unknown:
        listing = "; ".join(f"{stage}: {', '.join(names)}" for stage, names in declared.items())
        raise ValueError(f"unknown notebook parameter(s) {', '.join(unknown)}. The notebooks take: {listing}")
    previous = ""
    results = []
    for stage in STAGES:
        source = notebooks / f"{stage}.ipynb"
        output = folder / f"{stage}.ipynb"
        values = stage_parameters(stage, run, {k: v for k, v in params.items() if k in declared[stage]})
        fingerprint = hashlib.sha256(
            json.dumps(
                [previous, sha256_file(source), values, code, profile],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        previous = fingerprint
        recorded = state.get(stage, {})
        if not force and recorded.get("fingerprint") == fingerprint and output.is_file():
            log(f"{stage}: up to date, skipped (ran {recorded.get('finished', '?')}; --force / FORCE=1 re-runs it)")
            results.append(StageResult(stage, "skipped", 0.0, output))
            continue
        why = "forced" if force else ("inputs changed" if recorded else "not run yet")
        log(f"{stage}: running ({why}) → {output}")
        state.pop(stage, None)  # not up to date until it succeeds
        _save_state(state_path, state)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(output), parameters=values, cwd=str(notebooks), kernel_name=KERNEL, progress_bar=False
            )
        except papermill.PapermillExecutionError as err:
            raise StageFailed(
                f"{stage} failed at cell [{err.exec_count}] (cell index {err.cell_index}): {err.ename}: {err.evalue}\n"
                f"the executed notebook, with the error in place: {output}\n"
                "earlier stages' outputs are unchanged; fix the cause and run again (finished stages are skipped)"
            ) from None
        seconds = time.perf_counter() - start
        state[stage] = {
            "fingerprint": fingerprint,
            "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        _save_state(state_path, state)
        log(f"{stage}: done in {duration(seconds)}")
        results.append(StageResult(stage, "ran", seconds, output))

    index = write_report(folder)
    log(f"report: {index}")
    return results


def _save_state(path: Path, state: dict) -> None:
    data = json.dumps(state, indent=2).encode()
    atomic_write(path, lambda f: f.write(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moelab.pipeline", description="Run the four notebooks and the report."
    )
    parser.add_argument("run", nargs="?", default="default", help="run name: reports/<run>/ (default: default)")
    parser.add_argument("-f", "--parameters", type=Path, help="a YAML file of notebook parameters (papermill -f)")
    parser.add_argument("--force", action="store_true", help="re-run every stage, up to date or not")
    args = parser.parse_args(argv)
    params: dict[str, Any] = {}
    if args.parameters is not None:
        import yaml

        if not args.parameters.is_file():
            parser.error(f"no parameter file at {args.parameters}")
        params = yaml.safe_load(args.parameters.read_text()) or {}
        if not isinstance(params, dict):
            parser.error(f"{args.parameters} must hold a mapping of parameter: value")
    try:
        results = run_pipeline(args.run, params, force=args.force)
    except (StageFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = sum(r.seconds for r in results)
    print(
        "stages: "
        + ", ".join(f"{r.stage} {r.status}" + (f" {duration(r.seconds)}" if r.status == "ran" else "") for r in results)
    )
    print(f"total {duration(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
