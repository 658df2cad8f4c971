"""Findings across budgets: each choice's paired difference at several token budgets.

A sweep at one budget says what a choice does at that budget, under that recipe. To see
whether a cheap proxy predicts the verdict at the budget people train with, run the same
variants with the same seeds at several budgets (one sweep each, e.g. the built-in studies
``budget-transfer-600k``, ``-2m`` and ``-6m``), then set them side by side:

    table = load_budget_study(["budget-transfer-600k", "budget-transfer-2m", "budget-transfer-6m"])
    verdicts_by_budget(table)          # variant x budget: the raw verdict, and Holm's
    budget_conclusions(table)          # in words: which smaller budget's verdict is the largest's
    plot_budget_transfer(table)        # one panel per choice: difference and 95% interval vs tokens

The budget of a sweep is the median number of tokens its reference runs trained. Holm's
correction runs over every comparison of the study together (each variant at each budget),
the family a reader scans when asking "at which budgets does anything hold".
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from moelab.stats import BETTER, NO_DIFFERENCE, REFERENCE, WORSE, holm, summarize

BUDGET_SWEEPS = ["budget-transfer-600k", "budget-transfer-2m", "budget-transfer-6m"]  # the built-in study
TABLE_COLUMNS = ["variant", "budget_tokens", "sweep", "n_paired", "diff", "diff_ci_low", "diff_ci_high",
                 "p_value", "verdict", "p_holm", "verdict_holm"]  # fmt: skip
PANELS_PER_ROW = 3


def budget_table(results: dict[str, pd.DataFrame], metric: str = "val_bpb") -> pd.DataFrame:
    """Every variant's paired difference from its sweep's reference, at every budget (``TABLE_COLUMNS``).

    ``results``: per sweep name, its results (one row per run: ``variant``, ``seed``, ``tokens``
    and ``metric``; the first variant is the reference, and must be the same in every sweep).
    ``p_holm``/``verdict_holm``: Holm over all the study's comparisons.
    """
    references = {name: frame["variant"].iloc[0] for name, frame in results.items() if len(frame)}
    if len(set(references.values())) > 1:
        raise ValueError(f"the sweeps compare with different references ({references}); give them the same first variant")
    rows = []
    for name, frame in results.items():
        summary = summarize(frame, metric)
        reference = summary["variant"].iloc[0]
        budget = float(frame.loc[frame["variant"] == reference, "tokens"].median())
        for _, row in summary[summary["verdict"] != REFERENCE].iterrows():
            rows.append({"variant": row["variant"], "budget_tokens": budget, "sweep": name,
                         **{c: row[c] for c in ("n_paired", "diff", "diff_ci_low", "diff_ci_high", "p_value", "verdict")}})  # fmt: skip
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS[:-2])
    table["p_holm"] = holm(table["p_value"]) if len(table) else []
    table["verdict_holm"] = [(BETTER if d < 0 else WORSE) if p < 0.05 else NO_DIFFERENCE
                             for d, p in zip(table["diff"], table["p_holm"])]  # fmt: skip
    order = {variant: i for i, variant in enumerate(dict.fromkeys(table["variant"]))}  # the sweeps' own order
    return table.sort_values(["variant", "budget_tokens"], key=lambda c: c.map(order) if c.name == "variant" else c,
                             kind="stable").reset_index(drop=True)  # fmt: skip


def verdicts_by_budget(table: pd.DataFrame) -> pd.DataFrame:
    """Variant x budget (columns labelled in tokens): "raw verdict / Holm's verdict"."""
    cells = table.assign(
        budget=[_tokens_label(t) for t in table["budget_tokens"]],
        cell=[f"{raw} / {adjusted}" for raw, adjusted in zip(table["verdict"], table["verdict_holm"])],
    )
    order = [_tokens_label(t) for t in sorted(table["budget_tokens"].unique())]
    return cells.pivot(index="variant", columns="budget", values="cell").loc[list(dict.fromkeys(table["variant"])), order]


def budget_conclusions(table: pd.DataFrame) -> list[str]:
    """Per variant, in words: its verdict after Holm at each budget, and whether each smaller budget's
    verdict is the one at the largest budget (the cheap proxy predicts it) or not."""
    lines = []
    for variant, rows in table.groupby("variant", sort=False):
        rows = rows.sort_values("budget_tokens")
        at = [f"{verdict} at {_tokens_label(tokens)} ({diff:+.3f}, {low:+.3f} to {high:+.3f})" for verdict, tokens, diff, low, high
              in zip(rows["verdict_holm"], rows["budget_tokens"], rows["diff"], rows["diff_ci_low"], rows["diff_ci_high"])]  # fmt: skip
        line = f"{variant}, after Holm: " + "; ".join(at) + "."
        if len(rows) > 1:
            final, largest = rows["verdict_holm"].iloc[-1], _tokens_label(rows["budget_tokens"].iloc[-1])
            same = [_tokens_label(t) for t, v in zip(rows["budget_tokens"].iloc[:-1], rows["verdict_holm"].iloc[:-1]) if v == final]
            differ = [_tokens_label(t) for t, v in zip(rows["budget_tokens"].iloc[:-1], rows["verdict_holm"].iloc[:-1]) if v != final]
            if same:
                line += f" The verdict at {' and '.join(same)} is the one at {largest}."
            if differ:
                line += f" The verdict at {' and '.join(differ)} is not the one at {largest}: no proxy for it."
        lines.append(line)
    return lines


def plot_budget_transfer(table: pd.DataFrame, title: str = "Each choice against the reference, by budget",
                         unit: str = "bits per byte") -> plt.Figure:  # fmt: skip
    """One panel per variant: its paired difference from the reference with the 95% interval,
    against the training tokens (log scale); below 0 is better. Open markers: no verdict after Holm."""
    variants = list(dict.fromkeys(table["variant"]))
    ncols = min(len(variants), PANELS_PER_ROW)
    nrows = -(-len(variants) // ncols)
    # each panel its own scale (one large effect would flatten the others), 0 always in view
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(variants) :]:
        ax.set_visible(False)
    for ax, variant in zip(axes.flat, variants):
        rows = table[table["variant"] == variant]
        err = np.vstack([rows["diff"] - rows["diff_ci_low"], rows["diff_ci_high"] - rows["diff"]])
        ax.errorbar(rows["budget_tokens"], rows["diff"], yerr=np.nan_to_num(err), fmt="-", color="tab:blue", capsize=4)
        held = rows["verdict_holm"] != NO_DIFFERENCE
        ax.scatter(rows["budget_tokens"][held], rows["diff"][held], color="tab:blue", zorder=3, label="holds after Holm")
        ax.scatter(rows["budget_tokens"][~held], rows["diff"][~held], facecolor="white", edgecolor="tab:blue",
                   zorder=3, label="no verdict after Holm")  # fmt: skip
        ax.axhline(0, color="gray", lw=1)
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, -0.01), max(high, 0.01))
        ax.set_xscale("log")
        # ticks at the budgets themselves: the log axis's own minor labels overlap between 10^6 and 10^7
        budgets = sorted(set(table["budget_tokens"]))
        ax.set_xticks(budgets, [_tokens_label(t).removesuffix(" tokens") for t in budgets])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set(title=variant, xlabel="training tokens (log scale)")
    for row in axes:
        row[0].set_ylabel(f"difference from the reference,\n{unit} (below 0: better)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def load_budget_study(names: list[str], metric: str = "val_bpb", root: str | Path | None = None) -> pd.DataFrame:
    """:func:`budget_table` of the sweeps ``names`` from their folders, ``<root>/<name>/results.csv``.

    ``root``: where the sweep folders are; by default reports/sweeps/, where ``moelab sweep`` writes
    them (the committed reference studies are in reports/reference/experiments/).
    """
    from moelab.sweep.runner import sweep_dir

    results = {}
    for name in names:
        path = (Path(root) / name if root is not None else sweep_dir(name)) / "results.csv"
        if not path.exists():
            raise FileNotFoundError(f"no results for sweep {name!r} ({path}): run it first: moelab sweep {name}")
        results[name] = pd.read_csv(path)
    return budget_table(results, metric)


def reference_folder() -> Path:
    """Where the committed reference studies are: reports/reference/experiments/ of the repository."""
    from moelab.paths import project_root

    return project_root() / "reports" / "reference" / "experiments"


def load_reference_budget_study() -> pd.DataFrame:
    """:func:`budget_table` of the committed budget-transfer study: the budgets of ``BUDGET_SWEEPS`` committed so far."""
    folder = reference_folder()
    return load_budget_study([name for name in BUDGET_SWEEPS if (folder / name / "results.csv").is_file()], root=folder)


def _tokens_label(tokens: float) -> str:
    return f"{tokens / 1e6:.1f} M tokens" if tokens >= 1e6 else f"{tokens / 1e3:.0f} k tokens"
