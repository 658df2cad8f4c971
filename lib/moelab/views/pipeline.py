"""The main job: the notebooks in order with papermill, then the run's report.

``python -m moelab.views.pipeline [RUN] [-f params.yaml] [--profile tiny] [--force]`` (what
``make run`` calls) executes ``00_moe_by_hand → 01_data_prep → 02_train →
03_expert_utilization → 04_sampling → 05_experiments`` into ``reports/<RUN>/`` and ends with
:func:`moelab.views.report.write_report`. The run is named exactly RUN (default: the
profile's run name, ``default`` or ``tiny``); notebooks that take ``run_name`` and
``profile`` get them as ordinary parameters.

A stage is skipped when it is up to date: its executed notebook exists and the
fingerprint of its inputs (the notebook, its parameters, the moelab source, the
profile, and the previous stage's fingerprint) equals the one recorded in
``reports/<RUN>/pipeline.json`` when it last finished. So a re-run after a failure
resumes at the failed stage, editing notebook 03 re-runs 03 and 04, and changing the
library re-runs everything.

pipeline.json also records when a stage *started* and with which fingerprint. For the
training stage that tells the two reasons to run it again apart: started with the
same inputs but never finished (an interrupted ``make run``, a failure) resumes the
training from its last checkpoint (``if_exists="resume"``); changed inputs, or
``--force``, train from scratch (``if_exists="overwrite"``), and the log says which.
The sweeps (notebook 02's comparison, notebook 05's study) keep their finished runs
when their configs are unchanged; ``--force`` retrains them too (``overwrite=True``).

While a stage runs, the cells' printed output streams to the terminal, and the
kernel gets ``MOELAB_PROGRESS=log`` so the Trainer prints a plain status line every
few seconds. Kernels talk to the pipeline over local IPC sockets (POSIX), not TCP.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.localinterfaces import localhost
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from moelab.views.notebook import PROFILE_SETTINGS, resolve_profile
from moelab.paths import atomic_write_json, check_run_name, project_root, reports_dir, sha256_file
from moelab.views.report import duration, write_report

STAGES = ("00_moe_by_hand", "01_data_prep", "02_train", "03_expert_utilization", "04_sampling", "05_experiments", "06_forecasting")
TRAINING_STAGE = "02_train"  # the stage whose training run resumes after an interruption
KERNEL = "moelab"
PROGRESS_ENV = {"MOELAB_PROGRESS": "log"}  # plain status lines from the Trainer instead of a progress bar


class LocalKernelManager(AsyncKernelManager):
    """A kernel reached over Unix-domain (IPC) sockets: nothing listens on TCP, so the kernel
    has no reason to print its "running over TCP without encryption" warning.

    The sockets live in a fresh private temporary folder (jupyter_client's default is the
    relative path ``kernel-ipc``, which breaks when the kernel's working directory differs
    and collides between kernels started in one folder)."""

    transport = "ipc" if os.name == "posix" else "tcp"

    @default("ip")
    def _socket_path_default(self) -> str:
        if self.transport != "ipc":
            return localhost()
        folder = tempfile.mkdtemp(prefix="moelab-kernel-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return os.path.join(folder, "kernel")


@dataclass
class StageResult:
    stage: str
    status: str  # "ran" or "skipped"
    seconds: float
    notebook: Path


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook file and the failing cell."""


def stage_parameters(stage_declares: dict, run: str, profile: str, params: dict[str, Any]) -> dict[str, Any]:
    """What papermill injects into one notebook: the parameters it declares, its run name and profile."""
    values = {name: value for name, value in params.items() if name in stage_declares}
    if "run_name" in stage_declares:
        values["run_name"] = run
    if "profile" in stage_declares:
        values["profile"] = profile
    return values


def training_mode(recorded: dict, fingerprint: str, force: bool) -> tuple[str, str]:
    """``if_exists`` for the pipeline's own training run, and the reason, for the log."""
    if force:
        return "overwrite", "forced: training from scratch"
    if recorded.get("fingerprint") == fingerprint:
        return "resume", "same inputs as the unfinished last start: resuming the training from its last checkpoint"
    if recorded:
        return "overwrite", "inputs changed: training from scratch"
    return "overwrite", "not run yet"


def source_fingerprint() -> str:
    """sha256 over the moelab package's source files (what the notebooks import)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".csv") and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def default_run_name(profile: str) -> str:
    """The run a pipeline without a RUN argument makes: the profile's run name (``default``, ``tiny``)."""
    return PROFILE_SETTINGS[TRAINING_STAGE][profile]["run_name"]


def declared_parameters(papermill, notebooks: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Each stage's notebook parameters as papermill reads them; ValueError names a given parameter no notebook takes."""
    declared = {stage: papermill.inspect_notebook(str(notebooks / f"{stage}.ipynb")) for stage in STAGES}
    unknown = sorted(set(params) - {name for names in declared.values() for name in names})
    if unknown:
        listing = "; ".join(f"{stage}: {', '.join(names) or '-'}" for stage, names in declared.items())
        raise ValueError(f"unknown notebook parameter(s) {', '.join(unknown)}. The notebooks take: {listing}")
    return declared


def stage_fingerprint(previous: str, source: Path, values: dict[str, Any], code: str, profile: str) -> str:
    """sha256 of a stage's inputs: the previous stage's fingerprint, the notebook, its parameters, the
    moelab source (``code``, :func:`source_fingerprint`) and the profile."""
    return hashlib.sha256(
        json.dumps([previous, sha256_file(source), values, code, profile], sort_keys=True, default=str).encode()
    ).hexdigest()


def run_pipeline(
    run: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    profile: str | None = None,
    force: bool = False,
    notebooks_dir: Path | None = None,
    log=print,
    echo: bool = True,
    stages: list[str] | None = None,
) -> list[StageResult]:
    """Run the stages that are not up to date into ``reports/<run>/``, then write the report.

    ``profile`` None: ``$MOELAB_PROFILE``, else ``default``. ``echo``: stream the cells'
    printed output to this process's stdout/stderr while they run. ``stages``: only these
    (names or their numbers, e.g. ``["01", "02", "03", "04"]``); the others are left as they are.
    """
    import papermill

    selected = select_stages(stages)
    params = dict(params or {})
    profile = resolve_profile(profile if profile is not None else params.pop("profile", None))
    run = run if run is not None else default_run_name(profile)
    check_run_name(run, "run")
    if params.get("run_name", run) != run:
        raise ValueError(f"run_name={params['run_name']!r} in the parameters: the run is named by RUN ({run!r})")
    notebooks = Path(notebooks_dir) if notebooks_dir is not None else project_root() / "notebooks"
    declared = declared_parameters(papermill, notebooks, params)
    folder = reports_dir() / run
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "pipeline.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    code, previous, results = source_fingerprint(), "", []
    with _kernel_environment(PROGRESS_ENV):
        for stage in STAGES:
            source, output = notebooks / f"{stage}.ipynb", folder / f"{stage}.ipynb"
            values = stage_parameters(declared[stage], run, profile, params)
            fingerprint = stage_fingerprint(previous, source, values, code, profile)
            previous = fingerprint
            recorded = state.get(stage, {})
            skip = _skip(stage in selected, force, recorded, fingerprint, output)
            if skip:
                log(f"{stage}: {skip[1]}")
                results.append(StageResult(stage, skip[0], 0.0, output))
                continue
            why = _run_reason(stage, recorded, fingerprint, force, params, declared[stage], values)
            log(f"{stage}: running ({why}) → {output}")
            state[stage] = {"fingerprint": fingerprint, "started": _now()}  # finished: added on success
            atomic_write_json(state_path, state)
            seconds = _execute(papermill, source, output, values, notebooks, echo)
            state[stage].update(seconds=round(seconds, 1), finished=_now())
            atomic_write_json(state_path, state)
            log(f"{stage}: done in {duration(seconds)}")
            results.append(StageResult(stage, "ran", seconds, output))

    index = write_report(folder)
    log(f"report: {index}")
    return results


def _skip(selected: bool, force: bool, recorded: dict, fingerprint: str, output: Path) -> tuple[str, str] | None:
    """(status, message) of a stage that does not run (not selected, or up to date); None when it runs."""
    if not selected:
        return "not selected", "not selected, left as it is"
    if not force and recorded.get("fingerprint") == fingerprint and "finished" in recorded and output.is_file():
        return "skipped", f"up to date, skipped (ran {recorded['finished']}; --force / FORCE=1 re-runs it)"
    return None


def select_stages(stages: list[str] | None) -> tuple[str, ...]:
    """The stages named by ``stages`` (full names or their two-digit numbers), in pipeline order; None: all."""
    if not stages:
        return STAGES
    by_number = {stage[:2]: stage for stage in STAGES}
    unknown = [s for s in stages if s not in STAGES and s not in by_number]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the stages: {', '.join(STAGES)} (or their numbers, 00 to 06)")
    chosen = {by_number.get(s, s) for s in stages}
    return tuple(stage for stage in STAGES if stage in chosen)


def _run_reason(
    stage: str, recorded: dict, fingerprint: str, force: bool, params: dict[str, Any], declares: Any, values: dict
) -> str:
    """Why a stage that is not up to date runs, for the log; sets the training stage's ``if_exists``
    (:func:`training_mode`) or, forced, a sweep's ``overwrite`` in ``values`` unless given in ``params``."""
    why = "forced" if force else ("inputs changed" if recorded.get("fingerprint") else "not run yet")
    if stage == TRAINING_STAGE and "if_exists" not in params:
        values["if_exists"], why = training_mode(recorded, fingerprint, force)
    elif force and "overwrite" in declares and "overwrite" not in params:
        values["overwrite"] = True  # a sweep's finished runs are retrained too
    elif recorded.get("fingerprint") == fingerprint:
        why = "unfinished last time"
    return why


def _execute(papermill, source: Path, output: Path, values: dict, cwd: Path, echo: bool) -> float:
    """Run one notebook with papermill; its seconds, or StageFailed naming the failing cell."""
    start = time.perf_counter()
    streams = {"stdout_file": sys.stdout, "stderr_file": sys.stderr} if echo else {}
    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters=values,
            cwd=str(cwd),
            kernel_name=KERNEL,
            kernel_manager_class=LocalKernelManager,
            progress_bar=False,
            **streams,
        )
    except papermill.PapermillExecutionError as err:
        raise StageFailed(
            f"{source.stem} failed at cell [{err.exec_count}] (cell index {err.cell_index}): {err.ename}: {err.evalue}\n"
            f"the executed notebook, with the error in place: {output}\n"
            "earlier stages' outputs are unchanged; fix the cause and run again (finished stages are skipped, "
            "an unfinished training with unchanged inputs resumes from its last checkpoint)"
        ) from None
    return time.perf_counter() - start


@contextlib.contextmanager
def _kernel_environment(values: dict[str, str]):
    """Environment variables the kernels inherit, set for the pipeline's duration (a user's own setting wins)."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moelab run", description="Run the notebooks and the report.")
    parser.add_argument("run", nargs="?", help="run name: reports/<run>/ (default: the profile's, default or tiny)")
    parser.add_argument("-f", "--parameters", type=Path, help="a YAML file of notebook parameters (papermill -f)")
    parser.add_argument("--profile", help="default or tiny (default: $MOELAB_PROFILE, else default)")
    parser.add_argument("--force", action="store_true", help="re-run every stage, up to date or not")
    parser.add_argument("--stages", help="only these stages, by number or name, e.g. 01,02,03,04 (default: all)")
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
        stages = args.stages.replace(",", " ").split() if args.stages else None
        results = run_pipeline(args.run, params, profile=args.profile, force=args.force, stages=stages)
    except (StageFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue (an unfinished training resumes)", file=sys.stderr)
        return 130
    total = sum(r.seconds for r in results)
    print(
        "stages: "
        + ", ".join(f"{r.stage} {r.status}" + (f" {duration(r.seconds)}" if r.status == "ran" else "") for r in results
                    if r.status != "not selected")
    )
    print(f"total {duration(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
