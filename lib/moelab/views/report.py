"""A run's report: HTML of its executed notebooks and an index that summarizes the run.

``python -m moelab.views.report reports/<run>`` (``make run`` calls it last) writes, in that
folder, ``<notebook>.html`` for every executed notebook and ``index.html`` plus
``README.md``: the configuration, training time and tokens, validation bits per byte,
the schedule / fixed window / dense comparison, the router's balance, a sample, the
forecasting metrics, and the figures.
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path

import pandas as pd

from moelab.stats import shown_summary

FIGURES = [
    ("training_curves.png", "Bits per byte while training, with the context window"),
    ("balance_training.png", "Expert balance (MaxVio per layer) while training"),
    ("comparison.png", "Window schedule vs fixed window vs dense at one budget: values (and intervals with several seeds)"),
    ("comparison_curves.png", "The comparison's validation curves"),
    ("expert_load.png", "Expert load per layer"),
    ("load_over_time.png", "Expert load during training"),
    ("balance.png", "Router balance per layer"),
    ("specialization_tokens.png", "Experts by kind of token (of byte, for a byte-level model)"),
    ("specialization_genre.png", "Experts by genre"),
    ("coactivation.png", "Experts chosen together"),
    ("forecast_benchmark.png", "The pretrained forecaster and the baselines on held-out series, relative to seasonal naive (notebook 06)"),
    ("forecast_examples.png", "Forecasts from the last origin: the best, median and worst held-out series for moelab"),
]


def render_notebooks(folder: Path) -> list[Path]:
    """Each executed notebook in folder as a standalone HTML file beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    written = []
    for notebook in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
        target = notebook.with_suffix(".html")
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def summary(folder: Path) -> dict:
    """The facts of a run, from the files its notebooks left."""
    facts: dict = {"run": folder.name}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        facts.update(run=config["run_name"], model=config["model"], train=config["train"], params=config["params"],
                     stamp=stamp(folder))  # fmt: skip
    if (folder / "metrics.parquet").is_file():
        metrics = pd.read_parquet(folder / "metrics.parquet")
        last = metrics.iloc[-1]
        evaluated = metrics.dropna(subset=["val_bpb"])
        facts.update(
            steps=int(last["step"]),
            tokens=int(last["tokens"]),
            minutes=float(last["elapsed_s"]) / 60,
            tokens_per_s=float(last["tokens"] / max(last["elapsed_s"], 1e-9)),
            val_bpb=float(evaluated["val_bpb"].iloc[-1]) if len(evaluated) else math.nan,
        )
    if (folder / "val_split.json").is_file():  # notebook 02: the whole validation split, every byte scored once
        facts["val_split"] = json.loads((folder / "val_split.json").read_text())
    if (folder / "pipeline.json").is_file():  # stage times recorded by moelab.views.pipeline (make run)
        stages = json.loads((folder / "pipeline.json").read_text())
        facts["stages"] = {name: info["seconds"] for name, info in stages.items() if "seconds" in info}
    if (folder / "comparison.csv").is_file():
        facts["comparison"] = shown_summary(pd.read_csv(folder / "comparison.csv", index_col=0))
    if (folder / "balance.parquet").is_file():
        facts["balance"] = pd.read_parquet(folder / "balance.parquet")
    if (folder / "forecast_benchmark.csv").is_file():  # notebook 06
        facts["forecast"] = pd.read_csv(folder / "forecast_benchmark.csv", index_col=0)
    if (folder / "samples.md").is_file():
        text = (folder / "samples.md").read_text(encoding="utf-8")
        blocks = text.split("```text\n")
        facts["sample"] = blocks[1].split("```")[0].strip() if len(blocks) > 1 else ""
    return facts


def stamp(folder: Path) -> str | None:
    """Which code, preset and machine made the run: commit, closest preset, CPU (or GPU), torch, end time."""
    from moelab.runs.registry import run_row

    row = run_row(folder)
    if row is None:
        return None
    config = json.loads((folder / "config.json").read_text())
    preset = f"preset `{row['preset']}`" + (f" with {row['changes']}" if row["changes"] else "")
    machine = row["gpu"] or (f"{row['cpu']} ({row['threads']} threads)" if row["cpu"] else "an unrecorded machine")
    commit = (row["git_commit"] or "unknown")[:7]
    return f"Made with moelab {commit}, {preset}, on {machine}, torch {config.get('torch')}; finished {row['ended'] or '-'}."


def _headline(facts: dict) -> list[str]:
    lines = [facts["stamp"]] if facts.get("stamp") else []
    if "params" in facts:
        m = facts["model"]
        vocab = m.get("vocab_size", 256)  # 256: a byte-level model, whose tokens are bytes
        context = f"{m['context_window']} bytes" if vocab == 256 else f"{m['context_window']} tokens, vocabulary {vocab:,}"
        lines.append(
            f"Model: {m['n_layers']} layers × {m['n_embd']}, {m['n_experts']} experts top-{m['top_k']} "
            f"+ {m['n_common_experts']} common, context {context}; "
            f"{facts['params']['total']:,} parameters, {facts['params']['active']:,} active per token."
        )
    if "steps" in facts:
        lines.append(
            f"Training: {facts['steps']:,} steps, {facts['tokens'] / 1e6:.2f} M tokens in {facts['minutes']:.1f} min "
            f"({facts['tokens_per_s']:,.0f} tokens/s); validation {facts['val_bpb']:.3f} bits per byte "
            f"on {facts['train']['eval_windows'] if 'train' in facts else 'the'} fixed validation windows."
        )
    if "val_split" in facts:
        split = facts["val_split"]
        tokens = split.get("tokens", split["bytes"])
        scored = ", every byte" if tokens == split["bytes"] else f" in {tokens:,} tokens, every token"
        lines.append(f"The whole validation split ({split['bytes']:,} bytes{scored} scored once, stride {split['stride']}): "
                     f"{split['bits_per_byte']:.4f} bits per byte.")  # fmt: skip
    if facts.get("stages"):
        times = " · ".join(f"{name} {duration(seconds)}" for name, seconds in facts["stages"].items())
        lines.append(f"Pipeline (make run): {times}; total {duration(sum(facts['stages'].values()))}.")
    return lines


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_report(folder: str | Path) -> Path:
    """Render the notebooks and write index.html and README.md in a run's report folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no report folder {folder}; run `make run` (or the notebooks) first")
    pages = render_notebooks(folder)
    facts = summary(folder)
    parts = {
        "pages": pages,
        "tables": {k: facts[k] for k in ("comparison", "balance", "forecast") if k in facts},
        "figures": [(name, caption) for name, caption in FIGURES if (folder / "figures" / name).is_file()],
        "bench": (folder / "benchmarks" / "bench.png").is_file(),  # moelab bench --out <run>/benchmarks
        # sweeps, reference experiments, benchmarks kept beside the run
        "more": [(p.relative_to(folder).as_posix(), _title(p))
                 for p in sorted(folder.glob("*/README.md")) + sorted(folder.glob("sweeps/*/README.md"))],
    }  # fmt: skip
    (folder / "README.md").write_text(_markdown(facts, **parts), encoding="utf-8")
    index = folder / "index.html"
    index.write_text(_html(facts, **parts), encoding="utf-8")
    return index


def _markdown(facts: dict, pages: list[Path], tables: dict, figures: list, bench: bool, more: list) -> str:
    md = [f"# moelab run `{facts['run']}`", ""] + [f"- {line}" for line in _headline(facts)] + [""]
    md += ["Notebooks: " + ", ".join(f"[{p.stem}]({p.name})" for p in pages), ""]
    for name, table in tables.items():
        md += [f"## {name.capitalize()}", "", "```text", table.round(3).to_string(), "```", ""]
    if facts.get("sample"):
        md += ["## A sample", "", "```text", facts["sample"], "```", "", "More in [samples.md](samples.md).", ""]
    for name, caption in figures:
        md += [f"## {caption}", "", f"![{caption}](figures/{name})", ""]
    if bench:
        md += ["## Benchmark", "", "![benchmark](benchmarks/bench.png)", "", "Table: [bench.md](benchmarks/bench.md).", ""]
    if more:
        md += ["## More in this folder", ""] + [f"- [{title}]({link})" for link, title in more] + [""]
    return "\n".join(md)


def _html(facts: dict, pages: list[Path], tables: dict, figures: list, bench: bool, more: list) -> str:
    body = [f"<h1>moelab run <code>{html.escape(facts['run'])}</code></h1>"]
    body += [f"<p>{html.escape(line)}</p>" for line in _headline(facts)]
    body.append("<p>Notebooks: " + " · ".join(f'<a href="{p.name}">{p.stem}</a>' for p in pages) + "</p>")
    for name, table in tables.items():
        body.append(f"<h2>{name.capitalize()}</h2>" + table.round(3).to_html())
    if facts.get("sample"):
        body.append(
            f"<h2>A sample</h2><pre>{html.escape(facts['sample'])}</pre><p><a href='samples.md'>more samples</a></p>"
        )
    for name, caption in figures:
        body.append(f"<h2>{html.escape(caption)}</h2><img src='figures/{name}' style='max-width:100%'>")
    if bench:
        body.append(
            "<h2>Benchmark</h2><img src='benchmarks/bench.png' style='max-width:100%'>"
            "<p>Table: <a href='benchmarks/bench.md'>bench.md</a>, <a href='benchmarks/bench.csv'>bench.csv</a></p>"
        )
    if more:
        body.append("<h2>More in this folder</h2><ul>" + "".join(
            f"<li><a href='{link}'>{html.escape(title)}</a></li>" for link, title in more) + "</ul>")  # fmt: skip
    return (
        "<!doctype html><meta charset='utf-8'><title>moelab run</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "pre{white-space:pre-wrap}</style>" + "\n".join(body)
    )


def _title(readme: Path) -> str:
    """A README's first heading, without its #s (else the folder's name)."""
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip().replace("`", "")
    return readme.parent.name


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m moelab.views.report reports/<run>", file=sys.stderr)
        return 2
    try:
        print(f"wrote {write_report(args[0])}")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
