"""The budget-transfer study as one table and one figure, from the committed sweeps at each budget.

Reads reports/reference/experiments/budget-transfer-{600k,2m,6m}/results.csv (the budgets present),
writes budget-transfer.csv (each choice's paired difference at each budget, Holm over the whole
study) and budget-transfer.png (one panel per choice against the tokens) beside them, and prints
the verdicts by budget as markdown:

    python tools/reference_budget_transfer.py
"""

import matplotlib

matplotlib.use("Agg")

from moelab.sweep.budgets import load_reference_budget_study, plot_budget_transfer, reference_folder  # noqa: E402
from moelab.sweep.budgets import budget_conclusions, verdicts_by_budget  # noqa: E402


def main() -> None:
    folder, table = reference_folder(), load_reference_budget_study()
    table.to_csv(folder / "budget-transfer.csv", index=False)
    fig = plot_budget_transfer(table, title="Each choice against the MoE reference (cpu recipe, 4 seeds), by budget")
    fig.savefig(folder / "budget-transfer.png", dpi=110, bbox_inches="tight")
    columns = ["variant", "budget_tokens", "n_paired", "diff", "diff_ci_low", "diff_ci_high", "verdict", "p_holm", "verdict_holm"]
    print(table[columns].to_markdown(index=False, floatfmt=".4f"))
    print()
    print(verdicts_by_budget(table).to_markdown())
    print()
    print("\n".join(f"- {line}" for line in budget_conclusions(table)))


if __name__ == "__main__":
    main()
