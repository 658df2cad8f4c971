"""Findings across budgets: the table, the verdicts by budget and the figure, against scipy and statsmodels."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from moelab.sweep.budgets import budget_table, load_budget_study, plot_budget_transfer, verdicts_by_budget

# per budget: the reference's bits per byte by seed, and each variant's offsets from it by seed
BUDGETS = {
    "b-600k": (600_000, [2.60, 2.62, 2.58, 2.61], {"dense": [0.10, 0.12, 0.09, 0.11], "fixed": [0.01, -0.02, 0.02, 0.00]}),
    "b-2m": (2_000_000, [2.20, 2.21, 2.19, 2.22], {"dense": [0.05, 0.04, 0.06, 0.05], "fixed": [-0.03, -0.04, -0.02, -0.035]}),
}


def results_of(tokens, reference, offsets) -> pd.DataFrame:
    rows = [{"variant": "moe", "seed": s + 1, "val_bpb": v, "tokens": tokens + s} for s, v in enumerate(reference)]
    for variant, deltas in offsets.items():
        rows += [{"variant": variant, "seed": s + 1, "val_bpb": reference[s] + d, "tokens": tokens}
                 for s, d in enumerate(deltas)]  # fmt: skip
    return pd.DataFrame(rows)


def study() -> dict[str, pd.DataFrame]:
    return {name: results_of(*spec) for name, spec in BUDGETS.items()}


def test_the_table_holds_each_paired_difference_with_holm_over_the_whole_study():
    table = budget_table(study())
    assert list(table["variant"]) == ["dense", "dense", "fixed", "fixed"]
    assert list(table["budget_tokens"]) == [600_001.5, 2_000_001.5, 600_001.5, 2_000_001.5]  # the reference's median
    p_values = []
    for _, row in table.iterrows():
        deltas = np.array(BUDGETS[row["sweep"]][2][row["variant"]])
        assert row["diff"] == pytest.approx(deltas.mean())
        half = stats.t.ppf(0.975, len(deltas) - 1) * deltas.std(ddof=1) / np.sqrt(len(deltas))
        assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((deltas.mean() - half, deltas.mean() + half))
        p_values.append(stats.ttest_1samp(deltas, 0).pvalue)
        assert row["p_value"] == pytest.approx(p_values[-1])
    reject, adjusted, _, _ = multipletests(p_values, method="holm")
    assert list(table["p_holm"]) == pytest.approx(list(adjusted))
    assert list(table["verdict"]) == ["worse", "worse", "no detectable difference", "better"]
    assert [v != "no detectable difference" for v in table["verdict_holm"]] == list(reject)


def test_verdicts_by_budget_reads_variant_by_budget_raw_then_holm():
    table = budget_table(study())
    verdicts = verdicts_by_budget(table)
    assert list(verdicts.columns) == ["600 k tokens", "2.0 M tokens"] and list(verdicts.index) == ["dense", "fixed"]
    row = table[(table["variant"] == "fixed") & (table["sweep"] == "b-2m")].iloc[0]
    assert verdicts.loc["fixed", "2.0 M tokens"] == f"better / {row['verdict_holm']}"


def test_sweeps_with_other_references_are_refused():
    other = study()
    other["b-2m"] = other["b-2m"].replace({"moe": "dense-first"}).iloc[::-1]  # another first variant
    with pytest.raises(ValueError, match="different references"):
        budget_table(other)


def test_the_figure_has_a_panel_per_choice_on_a_log_token_axis():
    fig = plot_budget_transfer(budget_table(study()))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["dense", "fixed"]
    assert all(ax.get_xscale() == "log" and "tokens" in ax.get_xlabel() for ax in axes)
    assert "below 0: better" in axes[0].get_ylabel()
    line = axes[0].lines[0]  # the differences joined across budgets
    assert list(line.get_xdata()) == [600_001.5, 2_000_001.5]
    fig.canvas.draw()  # the budgets label the axis, and no minor tick adds a number between them
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["600 k", "2.0 M"]
    assert not any(t.get_text() for t in axes[0].get_xticklabels(minor=True))


def test_the_study_loads_from_its_sweep_folders_and_names_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_REPORTS_DIR", str(tmp_path))
    for name, frame in study().items():
        (tmp_path / "sweeps" / name).mkdir(parents=True)
        frame.to_csv(tmp_path / "sweeps" / name / "results.csv", index=False)
    pd.testing.assert_frame_equal(load_budget_study(list(BUDGETS)), budget_table(study()))
    with pytest.raises(FileNotFoundError, match="moelab sweep b-6m"):
        load_budget_study([*BUDGETS, "b-6m"])
    other = tmp_path / "elsewhere"
    (tmp_path / "sweeps").rename(other)  # a folder of committed sweeps, e.g. the reference experiments
    pd.testing.assert_frame_equal(load_budget_study(list(BUDGETS), root=other), budget_table(study()))


def test_many_choices_wrap_into_rows_of_three_panels():
    offsets = {f"v{i}": [0.01 * i, 0.02, 0.0, 0.01] for i in range(4)}
    fig = plot_budget_transfer(budget_table({"b": results_of(600_000, [2.6, 2.6, 2.6, 2.6], offsets)}))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["v0", "v1", "v2", "v3"]
    assert len(fig.axes) == 6 and len({round(ax.get_position().y0, 2) for ax in shown}) == 2  # two rows
    assert "below 0: better" in shown[3].get_ylabel()  # each row's first panel names the axis


def test_the_table_and_the_verdicts_keep_the_sweeps_order_of_variants():
    offsets = {"zeta": [0.01, 0.02, 0.0, 0.01], "alpha": [0.1, 0.1, 0.1, 0.1]}
    table = budget_table({"a": results_of(600_000, [2.6, 2.6, 2.6, 2.6], offsets),
                          "b": results_of(2_000_000, [2.2, 2.2, 2.2, 2.2], offsets)})  # fmt: skip
    assert list(table["variant"]) == ["zeta", "zeta", "alpha", "alpha"]
    assert list(verdicts_by_budget(table).index) == ["zeta", "alpha"]
    fig = plot_budget_transfer(table)
    assert [ax.get_title() for ax in fig.axes] == ["zeta", "alpha"]
    low, high = fig.axes[1].get_ylim()
    assert low < 0 < high  # zero in view even where every difference is above it


def test_the_committed_budget_study_table_is_the_one_its_committed_sweeps_give():
    """reports/reference/experiments/budget-transfer.csv is what tools/reference_budget_transfer.py
    computes from the committed sweeps beside it (re-run the tool after adding a budget)."""
    from moelab.sweep.budgets import load_reference_budget_study, reference_folder

    committed = pd.read_csv(reference_folder() / "budget-transfer.csv")
    recomputed = load_reference_budget_study()
    assert {"budget-transfer-600k", "budget-transfer-2m"} <= set(committed["sweep"])
    pd.testing.assert_frame_equal(committed, recomputed, check_dtype=False)


def test_the_conclusions_say_which_small_budget_predicts_the_largest():
    from moelab.sweep.budgets import budget_conclusions

    table = budget_table(study())  # dense worse at both budgets; fixed: nothing at 600 k, better at 2 M
    dense, fixed = budget_conclusions(table)
    rows = table.set_index(["variant", "sweep"])
    assert dense.startswith("dense, after Holm: worse at 600 k tokens (+0.105") and "worse at 2.0 M tokens" in dense
    assert dense.endswith("The verdict at 600 k tokens is the one at 2.0 M tokens.")
    fixed_2m = rows.loc[("fixed", "b-2m")]
    assert f"{fixed_2m['verdict_holm']} at 2.0 M tokens ({fixed_2m['diff']:+.3f}" in fixed
    assert fixed.endswith("The verdict at 600 k tokens is not the one at 2.0 M tokens: no proxy for it.")
