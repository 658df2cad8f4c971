"""The benchmark's table: its rows, the target and meets columns, and the files and printout it ends in."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from moelab.bench.configs import BenchConfig, Target


def table_row(bench: BenchConfig | None, measure: str, value: float, unit: str) -> dict:
    """One row of the table; ``main`` fills its target and meets columns (:func:`apply_targets`)."""
    config = bench.name if bench is not None else "-"
    return {"config": config, "measure": measure, "value": value, "unit": unit, "target": "", "meets": ""}


def apply_targets(table: pd.DataFrame, targets: tuple[Target, ...], amx: bool = False) -> pd.DataFrame:
    """Fill the target and meets columns of the rows a target applies to (:meth:`Target.applies`)."""
    table = table.copy()
    for i, row in table.iterrows():
        for target in targets:
            if target.applies(row["config"], row["measure"], amx):
                table.at[i, "target"] = f"{target.op} {target.value:g}"
                table.at[i, "meets"] = "yes" if target.met(row["value"]) else "no"
    return table


def write_table(table: pd.DataFrame, out: Path) -> None:
    """bench.csv, bench.md (values rounded) and bench.png into ``out``, and the rounded table printed."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    shown = table.assign(value=table["value"].map(_fmt))
    (out / "bench.md").write_text(shown.to_markdown(index=False) + "\n")
    from moelab.bench.plots import plot_benchmark  # matplotlib only when the figure is drawn
    from moelab.runs.registry import hardware

    machine = hardware()
    plot_benchmark(table, out / "bench.png", cpu=machine["gpu"] or f"{machine['cpu']}, {machine['threads']} threads")
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_colwidth", 60):
        print("\n" + shown.to_string(index=False))
    print(f"\nwritten: {out / 'bench.csv'}, bench.md, bench.png")


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
