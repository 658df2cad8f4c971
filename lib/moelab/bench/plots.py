"""The benchmark's figure: training and generation throughput side by side."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from moelab.bench.configs import CONFIGS


def _variants(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    rows = table[table["measure"].str.startswith(prefix)]
    return rows.assign(variant=rows["measure"].str.removeprefix(prefix))


def config_label(name: str) -> str:
    """A config's name with its shape, e.g. ``A: 4 layers × 128, window 64, batch 32, top-2 of 8``."""
    c = CONFIGS.get(name)
    if c is None:
        return name
    common = f" + {c.n_common_experts} common" if c.n_common_experts else ""
    return f"{name}: {c.n_layers} layers × {c.n_embd}\nwindow {c.window}, batch {c.batch}\ntop-{c.top_k} of {c.n_experts}{common}"


def plot_benchmark(table: pd.DataFrame, path, cpu: str | None = None) -> None:
    """The benchmark's figure (``python -m moelab.bench``): training and generation throughput."""
    import matplotlib.ticker
    import torch

    train, gen = (_variants(table, prefix) for prefix in ("train tok/s ", "generation tok/s "))
    fig, axes = plt.subplots(1, 2, figsize=(17, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    if not train.empty:
        order = list(dict.fromkeys(train["variant"]))  # as measured: naive first
        by_config = train.pivot(index="config", columns="variant", values="value")[order]
        by_config.index = [config_label(c) for c in by_config.index]
        by_config.plot.bar(ax=axes[0], rot=0)
        axes[0].legend(fontsize=8, title="model, precision", title_fontsize=8)
        axes[0].tick_params(axis="x", labelsize=8)
    axes[0].set(title="Training step throughput (higher is better)", xlabel="", ylabel="tokens / s")
    if not gen.empty:
        colors = ["tab:green" if "KV cache" in v else "tab:blue" if v.startswith("(compiled") else "tab:gray"
                  for v in gen["variant"]]  # fmt: skip
        gen.set_index("variant")["value"].plot.barh(ax=axes[1], color=colors)
        axes[1].set_xscale("log")
        axes[1].xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes[1].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    configs = ", ".join(dict.fromkeys(gen["config"])) if not gen.empty else "-"
    axes[1].set(title=f"Generation, config {configs} (greedy; log scale)", xlabel="tokens / s", ylabel="")
    where = f" · {cpu}" if cpu else ""
    fig.suptitle(f"moelab benchmark · torch {torch.__version__}{where}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
