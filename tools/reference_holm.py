"""Holm's correction over every comparison of the reference studies, as one family.

Each study's summary.csv already carries Holm within the study (``p_holm``); this table also
corrects across all the design studies' comparisons together, the stricter reading when the
studies are read side by side. The budget-transfer study (budget-transfer-*) is its own family,
corrected over its budgets by tools/reference_budget_transfer.py. Writes reports/reference/experiments/holm.csv and prints it as markdown:

    python tools/reference_holm.py
"""

from pathlib import Path

import pandas as pd

from moelab.stats import BETTER, NO_DIFFERENCE, WORSE, holm

FOLDER = Path(__file__).resolve().parents[1] / "reports" / "reference" / "experiments"


def main() -> None:
    paths = [path for path in sorted(FOLDER.glob("*/summary.csv")) if not path.parent.name.startswith("budget-transfer-")]
    summaries = [pd.read_csv(path).assign(study=path.parent.name) for path in paths]
    table = pd.concat(summaries, ignore_index=True).query("verdict != 'reference'").reset_index(drop=True)
    table["p_holm_all"] = holm(table["p_value"])
    table["verdict_holm_all"] = [(BETTER if d < 0 else WORSE) if p < 0.05 else NO_DIFFERENCE
                                 for d, p in zip(table["diff"], table["p_holm_all"])]  # fmt: skip
    columns = ["study", "variant", "n_paired", "diff", "diff_ci_low", "diff_ci_high", "p_value", "verdict",
               "p_holm", "verdict_holm", "p_holm_all", "verdict_holm_all"]  # fmt: skip
    table[columns].to_csv(FOLDER / "holm.csv", index=False)
    print(table[columns].to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
