"""The GPU check of issue 18, one call on a machine with a GPU (see tools/gpu_check.sh).

Steps, each in its own subprocess with a time limit; a failure is logged and the next step runs:

  a. env      the GPU (nvidia-smi) and torch                                  -> gpu_check.log
  b. tests    the tests marked on_device on CUDA (MoE vs the per-token reference, kernels incl.
              grouped_mm vs the loop in bf16, causality, cached = recomputed generation), and
              tests/test_gpu.py (no host sync in a MoE step, graphed = eager training) -> tests.txt
  c. profile  tools/gpu_profile.py: matmul rate at n_embd 1028 vs 1024, ms per step eager and
              graphed, the share of it the GPU is busy, the top kernels       -> profile.md
  d. bench    python -m moelab.bench --device cuda, configs A B C seed seed-32k seed-64k, short
              (the seed model at its own 2,048 tokens a step and fed 32K and 64K) -> bench.md, bench.csv
  e. seed     the seed preset's full 2000 steps, bf16, CUDA graphs: time, tokens/s, MFU -> seed_train.json
  f. compare  the first 10 losses of one tiny config in fp32 on CPU and CUDA (and bf16 on CUDA)
                                                                              -> fp32_compare.md

Everything printed goes to gpu_check.log too; summary.md closes it (8 files: what the GPU
machine of this workplace hands back at most). ``--cpu-smoke`` runs the same steps on the
CPU with tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LOG = None  # the open log file


def say(text: str = "") -> None:
    print(text, flush=True)
    if LOG is not None:
        LOG.write(text + "\n")
        LOG.flush()


def run(cmd: list[str], timeout: float, env: dict, out_file: Path | None = None) -> tuple[int | str, str, float]:
    """Run a command in its own process group; (return code or 'timeout', output, seconds)."""
    say(f"$ {' '.join(cmd)}   (limit {timeout:.0f} s)")
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1))
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        code = "timeout"
    seconds = time.perf_counter() - start
    say(output.rstrip())
    say(f"-> {code} in {seconds:.1f} s")
    if out_file is not None:
        with open(out_file, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{output}\n-> {code} in {seconds:.1f} s\n\n")
    return code, output, seconds


class Check:
    def __init__(self, out: Path, smoke: bool, budget_s: float, dataset: Path) -> None:
        self.out, self.smoke, self.dataset_dir = out, smoke, dataset
        self.deadline = time.perf_counter() + budget_s
        self.device = "cpu" if smoke else "cuda"
        self.tmp = Path(tempfile.mkdtemp(prefix="moelab-gpu-check-"))
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "lib") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "MOELAB_DATA_DIR": str(self.tmp / "data"),
            "MOELAB_REPORTS_DIR": str(self.tmp / "reports"),
            "MOELAB_PROGRESS": "log",
            "MOELAB_TEST_DEVICE": self.device,
            "PYTHONUNBUFFERED": "1",
        }
        self.results: dict[str, str] = {}

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - time.perf_counter() - reserve

    def step(self, name: str, fn, limit: float, reserve: float) -> None:
        """Run one step with at most ``limit`` seconds, keeping ``reserve`` for the steps after it."""
        timeout = min(limit, self.left(reserve))
        say(f"\n=== step {name} ({timeout:.0f} s at most) ===")
        if timeout < 5:
            self.results[name] = "skipped: no time left"
            say(self.results[name])
            return
        try:
            self.results[name] = fn(timeout)
        except Exception as err:  # noqa: BLE001  (every failure is logged, the next step runs)
            self.results[name] = f"FAILED in the driver: {type(err).__name__}: {err}"
        say(f"step {name}: {self.results[name]}")

    # ------------------------------------------------------------------ steps
    def env_info(self, timeout: float) -> str:
        path = None  # the log has it
        if shutil.which("nvidia-smi"):
            run(["nvidia-smi"], min(timeout, 20), self.env, path)
        else:
            say("nvidia-smi: not found")
        code = (
            "import torch, platform, sys; print('python', sys.version.split()[0], platform.platform());"
            "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available());"
            "import torch.nn.functional as F; print('grouped_mm', hasattr(F, 'grouped_mm'));"
            "[print(i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i),"
            " round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1), 'GiB') for i in range(torch.cuda.device_count())];"
            "import moelab; from moelab.train.precision import resolve_device, device_name;"
            "d = resolve_device('auto'); print('moelab', moelab.__version__, 'auto ->', d, device_name(d))"
        )
        rc, output, _ = run([PY, "-c", code], timeout, self.env, path)
        return "ok: " + " | ".join(l for l in output.splitlines() if l.startswith(("torch", "0 "))) if rc == 0 else f"FAILED ({rc})"

    def tests(self, timeout: float) -> str:
        path = self.out / "tests.txt"
        base = [PY, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-rs"]
        start = time.perf_counter()
        device_tests = base + ["-m", "on_device", "tests/test_moe.py", "tests/test_model.py", "tests/test_recipe.py"]
        if self.smoke:  # a few of them, enough to see the selection run
            device_tests += ["-k", "per_token_reference or (causality and learned) or auto_kernel"]
        rc1, out1, _ = run(device_tests, timeout * 0.75, self.env, path)
        rc2, out2, _ = run(base + ["tests/test_gpu.py"], timeout - (time.perf_counter() - start), self.env, path)
        tail = lambda text: (text.strip().splitlines() or ["no output"])[-1]  # noqa: E731
        ok = rc1 == 0 and rc2 == 0
        return f"{'ok' if ok else 'FAILED'}: on_device tests on {self.device}: {tail(out1)}; test_gpu.py: {tail(out2)}"

    def profile(self, timeout: float) -> str:
        cmd = [PY, str(ROOT / "tools" / "gpu_profile.py"), str(self.out / "profile.md")] + (["--smoke"] if self.smoke else [])
        rc, output, _ = run(cmd, timeout, self.env)
        busy = [l for l in output.splitlines() if l.startswith("{")]
        return ("ok: " if rc == 0 else f"FAILED ({rc}): ") + " | ".join(busy)[:600]

    def bench(self, timeout: float) -> str:
        """A, B, C (and generation) first, then the seed config alone: a timeout there keeps A, B, C."""
        start = time.perf_counter()
        base = [PY, "-m", "moelab.bench", "--device", self.device]
        if self.smoke:
            parts = [["--configs", "A", "--repeats", "1", "--steps", "1", "--new-tokens", "3",
                      "--skip", "memory", "peak", "--precision", "fp32"]]
        else:
            short = ["--repeats", "3", "--steps", "5"]
            parts = [["--configs", "A", "B", "C", *short, "--generation-repeats", "1", "--new-tokens", "64"],
                     ["--configs", "seed", "seed-32k", "seed-64k", *short, "--skip", "generation"]]
        codes, tables, texts = [], [], []
        for i, extra in enumerate(parts):
            folder = self.tmp / f"bench{i}"
            left = timeout - (time.perf_counter() - start)
            limit = left * 0.45 if i == 0 and len(parts) > 1 else left
            rc, _, _ = run(base + extra + ["--out", str(folder)], limit, self.env)
            codes.append(rc)
            if (folder / "bench.csv").exists():
                tables.append(folder / "bench.csv")
                texts.append(f"## python -m moelab.bench {' '.join(base[3:] + extra)}\n\n" + (folder / "bench.md").read_text())
        if tables:
            import pandas as pd

            pd.concat([pd.read_csv(t) for t in tables]).to_csv(self.out / "bench.csv", index=False)
            (self.out / "bench.md").write_text("\n".join(texts))
        status = "ok" if all(c == 0 for c in codes) else f"FAILED ({codes})"
        return status + (": " + "; ".join(_bench_headlines(self.out / "bench.csv")) if tables else ": no table")

    def prepare_dataset(self) -> str:
        target = self.tmp / "data" / "processed"
        target.mkdir(parents=True, exist_ok=True)
        if (self.dataset_dir / "meta.json").is_file():
            shutil.copytree(self.dataset_dir, target / "machado")
            say(f"dataset: {self.dataset_dir} (copied as machado)")
            return "machado"
        say(f"dataset: {self.dataset_dir} has no prepared dataset (meta.json): building a synthetic byte dataset instead")
        code = (
            "import random, sys, tempfile; from pathlib import Path; from moelab.data import prepare_dataset;"
            "rng = random.Random(0); folder = Path(tempfile.mkdtemp());"
            "words = 'a vida é uma ópera e uma grande ópera o tenor e o barítono lutam pelo soprano capitu olhos de ressaca ao vencedor as batatas'.split();"
            "[(folder / c).mkdir() for c in ('romance', 'conto', 'teatro')];"
            "[(folder / c / f'obra{i}.txt').write_text('\\n'.join(' '.join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(1000)), encoding='utf-8')"
            " for c in ('romance', 'conto', 'teatro') for i in range(4)];"
            "prepare_dataset(folder, 'synthetic', val_fraction=0.1, test_fraction=0.1, progress=False)"
        )
        rc, _, _ = run([PY, "-c", code], 120, self.env)
        if rc != 0:
            raise RuntimeError("building the synthetic dataset failed")
        return "synthetic"

    def seed_train(self, timeout: float) -> str:
        """The seed preset's whole run (its 2000 steps; smoke: the tiny preset, 20 steps)."""
        start = time.perf_counter()
        if not hasattr(self, "dataset"):
            self.dataset = self.prepare_dataset()
        steps = 20 if self.smoke else 2000
        cmd = [PY, "-m", "moelab.train", "--preset", "tiny" if self.smoke else "seed", "--run-name", "gpu-seed",
               "--device", self.device, "--dataset", self.dataset, "--no-progress",
               "--set", f"max_steps={steps}", "--set", f"eval_every={steps // 2}", "--set", "checkpoint_every=100000",
               "--set", "log_every=10", "--set", "keep_checkpoints=1"]
        rc, output, wall = run(cmd, timeout - (time.perf_counter() - start), self.env)
        summary = analyse_run(self.tmp / "reports" / "gpu-seed", wall, steps, steps)
        summary.update({"returncode": rc, "command": " ".join(cmd[1:]), "dataset": self.dataset,
                        "output_tail": output.strip().splitlines()[-6:]})
        (self.out / "seed_train.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if rc != 0:
            return f"FAILED ({rc})"
        return (f"ok: {summary.get('steps')} steps in {summary.get('train_s', float('nan')):.1f} s training "
                f"({wall:.1f} s wall, start-up, evaluation and the final checkpoint included); "
                f"{summary.get('tokens_per_s_steady', float('nan')):,.0f} tok/s steady; "
                f"MFU {summary.get('mfu_steady', float('nan')):.3f} steady, {summary.get('mfu', float('nan')):.3f} overall, "
                f"vs {summary.get('peak_source')}; CUDA graphs {summary.get('cuda_graphs')}; val bpb {summary.get('val_bpb')}")

    def compare(self, timeout: float) -> str:
        if not hasattr(self, "dataset"):
            self.dataset = self.prepare_dataset()
        other = self.device
        cmd = [PY, str(Path(__file__)), "--compare-losses", str(self.out / "fp32_compare.md"),
               "--dataset-name", self.dataset, "--other-device", other]
        rc, output, _ = run(cmd, timeout, self.env)
        line = next((l for l in output.splitlines() if l.startswith("max relative difference")), "no result")
        return ("ok: " if rc == 0 else f"FAILED ({rc}): ") + line


def analyse_run(reports: Path, wall: float, steps: int, full_steps: int) -> dict:
    """tokens/s and MFU of a training run from its metrics and config.json; the extrapolated full run."""
    import pandas as pd

    from moelab.bench.flops import rated_bf16_peak, train_flops_per_token
    from moelab.config.model import ModelConfig

    info = json.loads((reports / "config.json").read_text())
    metrics = pd.read_parquet(reports / "metrics.parquet").sort_values("step")
    config = ModelConfig.from_dict(info["model"])
    name = info.get("device_name", "cpu")
    rated = rated_bf16_peak(name) if info["device"].startswith("cuda") else None
    peak, source = (rated[1], f"rated {rated[0]} {rated[1] / 1e12:.0f} TFLOP/s") if rated else (None, "no rated peak")
    rows = metrics.assign(
        d_tokens=metrics["tokens"].diff().fillna(metrics["tokens"]),
        d_s=metrics["elapsed_s"].diff().fillna(metrics["elapsed_s"]),
    )
    rows["flops"] = [t * train_flops_per_token(config, int(w)) for t, w in zip(rows["d_tokens"], rows["window"])]
    steady = rows[rows["step"] > rows["step"].max() * 0.3]  # after start-up (allocator, cuBLAS, autotuning)
    train_s = float(metrics["elapsed_s"].iloc[-1])
    result = {
        "device": info["device"], "device_name": name, "precision": info["precision"], "torch": info["torch"],
        "compile": info["train"].get("compile"), "cuda_graphs": info.get("cuda_graphs"), "params": info["params"],
        "steps": int(metrics["step"].iloc[-1]), "tokens": int(metrics["tokens"].iloc[-1]),
        "train_s": train_s, "wall_s": wall,
        "tokens_per_s": float(metrics["tokens"].iloc[-1] / train_s),
        "tokens_per_s_steady": float(steady["d_tokens"].sum() / steady["d_s"].sum()),
        "flops_per_token_at_full_window": train_flops_per_token(config, config.context_window),
        "peak_source": source,
        "final_train_loss": float(metrics["loss"].iloc[-1]),
        "val_bpb": float(metrics["val_bpb"].dropna().iloc[-1]) if metrics["val_bpb"].notna().any() else None,
        # the window schedule scales with the budget, so the full run has the same mix of windows
        "extrapolated_2000_steps_s": train_s * full_steps / steps,
        "extrapolated_2000_steps_steady_s": None,
    }
    if len(steady):
        before = rows.loc[rows["step"] < steady["step"].iloc[0], "step"]
        covered = int(steady["step"].iloc[-1] - (before.iloc[-1] if len(before) else 0))
        result["extrapolated_2000_steps_steady_s"] = float(steady["d_s"].sum() / covered * full_steps)
    if peak:
        result["mfu"] = float(rows["flops"].sum() / train_s / peak)
        result["mfu_steady"] = float(steady["flops"].sum() / steady["d_s"].sum() / peak)
    return result


def _bench_headlines(csv: Path) -> list[str]:
    import pandas as pd

    table = pd.read_csv(csv)
    keep = table[table["measure"].str.contains("MFU|MoE overhead|train tok/s moelab|KV cache\\) window 256", regex=True)]
    return [f"{r.config} {r.measure} = {r.value:.4g}" for r in keep.itertuples()][:14]


def compare_losses(out: Path, dataset: str, other: str, steps: int = 10) -> int:
    """The first losses of one tiny config, same seed and data: CPU fp32, <other> fp32, <other> bf16."""
    import pandas as pd

    from moelab import Trainer
    from moelab.config.presets import build_configs

    runs = {}
    variants = [("cpu", "fp32"), (other, "fp32")] + ([(other, "bf16")] if other.startswith("cuda") else [])
    for device, precision in variants:
        overrides = {"max_steps": steps, "log_every": 1, "eval_every": steps, "checkpoint_every": steps,
                     "router_noise": False, "precision": precision, "n_embd": 64, "n_heads": 4, "expert_hidden": 128}
        model_config, train_config = build_configs("tiny", overrides)
        trainer = Trainer(model_config, train_config, f"cmp-{device.replace(':', '')}-{precision}",
                          dataset=dataset, device=device, progress=False)
        label = f"{device} {precision}" + (" (again)" if f"{device} {precision}" in runs else "")
        runs[label] = trainer.fit(overwrite=True).metrics.set_index("step")["loss"]
    table = pd.DataFrame(runs)
    cpu, gpu = table.columns[0], table.columns[1]
    table[f"rel diff {gpu} vs {cpu}"] = (table[gpu] - table[cpu]).abs() / table[cpu].abs()
    if len(table.columns) > 3:
        table[f"rel diff {table.columns[2]} vs {cpu}"] = (table[table.columns[2]] - table[cpu]).abs() / table[cpu].abs()
    worst = table[f"rel diff {gpu} vs {cpu}"].max()
    text = (f"# CPU vs {other}: the first {steps} training losses (tiny preset, n_embd 64, router noise off, same seed and data)\n\n"
            + table.to_markdown(floatfmt=".6g") + f"\n\nmax relative difference {gpu} vs {cpu}: {worst:.3g}\n")
    if len(table.columns) > 4:
        text += f"max relative difference {table.columns[2]} vs {cpu}: {table.iloc[:, 4].max():.3g}\n"
    out.write_text(text)
    print(text)
    print(f"max relative difference {gpu} vs {cpu}: {worst:.3g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--cpu-smoke", action="store_true", help="the same steps on the CPU with tiny sizes (~1 min)")
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "processed" / "machado",
                        help="a prepared moelab dataset folder (default data/processed/machado)")
    parser.add_argument("--budget-s", type=float, default=None, help="overall time limit (default 540 s; smoke 240 s)")
    parser.add_argument("--compare-losses", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-name", help=argparse.SUPPRESS)
    parser.add_argument("--other-device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_losses:  # step e, in its own process
        return compare_losses(args.outdir, args.dataset_name, args.other_device)

    global LOG
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    LOG = open(out / "gpu_check.log", "w")
    budget = args.budget_s or (240.0 if args.cpu_smoke else 540.0)
    check = Check(out, args.cpu_smoke, budget, args.dataset.resolve())
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    say(f"moelab GPU check · {started} · {'CPU SMOKE MODE' if args.cpu_smoke else 'cuda'} · budget {budget:.0f} s · "
        f"out {out} · temp {check.tmp}")
    t0 = time.perf_counter()
    # limits and reserves (seconds) sized for 9 minutes on an H100 (the bench feeds the seed model
    # 32K and 64K tokens a step too); smoke: scaled down
    scale = budget / 540.0
    check.step("a env", check.env_info, 25 * scale, 480 * scale)
    check.step("b tests", check.tests, 80 * scale, 400 * scale)
    check.step("c profile", check.profile, 70 * scale, 330 * scale)
    check.step("d bench", check.bench, 150 * scale, 180 * scale)
    check.step("e seed", check.seed_train, 170 * scale, 10 * scale)
    check.step("f compare", check.compare, 40 * scale, 0)
    total = time.perf_counter() - t0
    lines = [f"# moelab GPU check, {started}", "",
             f"mode: {'CPU smoke (tiny sizes)' if args.cpu_smoke else 'CUDA'}; total {total:.0f} s of a {budget:.0f} s budget", ""]
    lines += [f"- **{name}**: {result}" for name, result in check.results.items()]
    lines += ["", "files: " + ", ".join(sorted(p.name for p in out.iterdir()))]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    say("\n=== summary ===\n" + "\n".join(lines))
    shutil.rmtree(check.tmp, ignore_errors=True)
    LOG.close()
    return 0 if all(r.startswith(("ok", "skipped")) for r in check.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
