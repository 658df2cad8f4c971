"""What the router does: routing statistics as pandas DataFrames, and their figures.

Collect the routing of a trained model over fixed windows of text
(:func:`collect_routing`), then ask: how is the load spread over experts
(:func:`expert_load_table`, :func:`balance_stats`), which experts are chosen together
(:func:`coactivation`), and do some experts take certain kinds of tokens or genres
(:func:`specialization`, with :func:`token_classes` or per-window labels)? Tokens are
bytes, or BPE tokens of several bytes: pass the model's tokenizer
(:func:`moelab.runs.checkpoint.load_tokenizer`) where a function takes one.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from moelab.nn.moe import metrics
from moelab.data.batches import evenly_spaced_windows  # noqa: F401  (notebook 03 calls analysis.evenly_spaced_windows)
from moelab.data import SEPARATOR, char_class
from moelab.nn.model import Transformer, eval_mode
from moelab.data.tokenizer import ByteTokenizer, model_tokenizer


TOKEN_CLASSES = ("lowercase", "uppercase", "multi-byte (UTF-8)", "digit", "space", "punctuation", "newline", "other")  # "other": controls, symbols


@dataclass
class Routing:
    """The routing of T tokens through L MoE layers with N experts, top-k each.

    tokens: (T,) the routed input token ids (bytes for a byte-level model); experts, weights, dropped: (L, T, k);
    probs: (L, T, N) router probabilities; labels: optional (T,) label per token
    (e.g. the genre of the text it came from).
    """

    tokens: np.ndarray
    experts: np.ndarray
    weights: np.ndarray
    probs: np.ndarray
    dropped: np.ndarray
    labels: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return self.experts.shape[0]

    @property
    def n_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[-1]


@torch.no_grad()
def collect_routing(
    model: Transformer,
    windows: np.ndarray,
    labels: np.ndarray | None = None,
    batch_size: int = 32,
) -> Routing:
    """Run the model (eval mode, no router noise) over windows of token ids (n, length) and keep its routing.

    labels: optional (n,) label per window, repeated for each of its tokens.
    """
    if not model.config.is_moe:
        raise ValueError("the model is dense (n_experts=0): there is no router to analyse")
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] > model.config.context_window:
        raise ValueError(f"windows must be (n, length <= {model.config.context_window}), got {windows.shape}")
    if windows.size and not (0 <= windows.min() and windows.max() < model.config.vocab_size):
        raise ValueError(
            f"windows hold token ids up to {windows.max()}, but the model has {model.config.vocab_size} tokens: "
            "route text encoded with the model's own tokenizer (moelab.runs.checkpoint.load_tokenizer)"
        )
    device = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"experts": [], "weights": [], "probs": [], "dropped": []}
    with eval_mode(model):
        for i in range(0, len(windows), batch_size):
            x = torch.tensor(windows[i : i + batch_size], dtype=torch.long, device=device)
            records = model(x, record_routing=True).routing
            for name in parts:
                stacked = torch.stack([getattr(r, name) for r in records]).flatten(1, 2)  # (L, B·T, ·)
                parts[name].append((stacked.float() if stacked.is_floating_point() else stacked).cpu().numpy())
    token_labels = None if labels is None else np.repeat(np.asarray(labels), windows.shape[1])
    return Routing(
        tokens=windows.reshape(-1),
        experts=np.concatenate(parts["experts"], axis=1),
        weights=np.concatenate(parts["weights"], axis=1),
        probs=np.concatenate(parts["probs"], axis=1),
        dropped=np.concatenate(parts["dropped"], axis=1),
        labels=token_labels,
    )


def category_windows(texts: pd.Series, length: int, per_category: int, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``length`` tokens spread evenly over each category's texts, and the category of each window.

    texts: cleaned texts indexed by (category, work), as ``PreparedDataset.cleaned_texts()`` gives;
    a category's works are joined as in the split files (by ``moelab.data.SEPARATOR``) and
    encoded with ``tokenizer`` (default: bytes).
    """
    tokenizer = tokenizer or ByteTokenizer()
    windows, labels = [], []
    for category, group in texts.groupby(level="category"):
        data = tokenizer.encode_array(SEPARATOR.join(group))
        if len(data) < length:
            continue
        chosen = evenly_spaced_windows(data, length, per_category)
        windows.append(chosen)
        labels.extend([category] * len(chosen))
    return np.concatenate(windows), np.array(labels)


# ============================================================================ statistics


def expert_load_table(routing: Routing) -> pd.DataFrame:
    """Share of routed token slots each expert receives: layers × experts, rows sum to 1."""
    experts = torch.from_numpy(np.asarray(routing.experts, dtype=np.int64))
    shares = [metrics.expert_load(experts[layer], routing.n_experts).double().numpy() for layer in range(routing.n_layers)]
    return _layer_expert_frame(np.stack(shares))


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats (0 · log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def balance_stats(routing: Routing) -> pd.DataFrame:
    """Per layer: how balanced and how decisive the router is.

    load_cv: coefficient of variation of the expert load (0 = perfectly balanced); maxvio:
    (max load − mean load) / mean load (0 = balanced), both from :func:`moelab.nn.moe.metrics.load_imbalance`;
    min_max_ratio: least over most loaded expert (1 = balanced); token_entropy: mean
    entropy of each token's router distribution; mean_entropy: entropy of the mean
    distribution (log N = every expert equally likely overall); top1_over_0_9: share
    of tokens whose best gate weight exceeds 0.9; dropped: share of slots dropped by
    a capacity limit.
    """
    load = expert_load_table(routing).to_numpy()
    load_cv, maxvio = (v.tolist() for v in metrics.load_imbalance(torch.tensor(load)))
    rows = []
    for layer in range(routing.n_layers):
        probs = routing.probs[layer]
        rows.append(
            {
                "load_cv": load_cv[layer],
                "maxvio": maxvio[layer],
                "min_max_ratio": load[layer].min() / load[layer].max(),
                "token_entropy": entropy(probs).mean(),
                "mean_entropy": entropy(probs.mean(axis=0)),
                "max_entropy": math.log(routing.n_experts),
                "top1_over_0_9": float((routing.weights[layer][:, 0] > 0.9).mean()),
                "dropped": float(routing.dropped[layer].mean()),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(range(routing.n_layers), name="layer"))


def coactivation(routing: Routing, layer: int) -> pd.DataFrame:
    """Share of tokens for which experts i and j are both chosen (diagonal: expert i chosen)."""
    chosen = np.zeros((routing.experts.shape[1], routing.n_experts))
    np.put_along_axis(chosen, routing.experts[layer], 1.0, axis=1)
    matrix = chosen.T @ chosen / len(chosen)
    index = pd.Index(range(routing.n_experts), name="expert")
    return pd.DataFrame(matrix, index=index, columns=index.rename("expert "))


def byte_class(value: int) -> str:
    """The kind of byte a byte-level model sees: any byte of a multi-byte UTF-8 character, or the ASCII character's class."""
    return "multi-byte (UTF-8)" if value >= 0x80 else char_class(chr(value))


def token_class(piece: bytes) -> str:
    """The kind of token (one of TOKEN_CLASSES): a byte's :func:`byte_class`; for a BPE token of
    several bytes, the class of its first character after a leading space (a word's start)."""
    if len(piece) == 1:
        return byte_class(piece[0])
    text = piece.decode("utf-8", errors="replace")
    core = text.lstrip(" ")
    if not core or (core.isspace() and "\n" not in core):
        return "space"
    return "multi-byte (UTF-8)" if ord(core[0]) > 127 else byte_class(ord(core[0]))


def token_classes(routing: Routing, tokenizer=None) -> np.ndarray:
    """The :func:`token_class` of each routed token, under the model's tokenizer (default: bytes)."""
    tokenizer = tokenizer or ByteTokenizer()
    if routing.tokens.size and routing.tokens.max() >= tokenizer.vocab_size:
        raise ValueError(f"the routed tokens go up to {routing.tokens.max()}, past the tokenizer's {tokenizer.vocab_size}: "
                         "pass the model's own tokenizer (moelab.runs.checkpoint.load_tokenizer)")  # fmt: skip
    return np.array([token_class(piece) for piece in tokenizer.pieces], dtype=object)[routing.tokens]


def specialization(routing: Routing, labels: np.ndarray, layer: int) -> pd.DataFrame:
    """Labels × experts: P(expert | label) / P(expert), the lift of each expert for each label.

    1 everywhere means routing does not depend on the label (whatever the overall
    balance); 2 means the expert takes twice its usual share of that label's tokens.
    """
    labels = np.asarray(labels)
    slots = pd.DataFrame({"label": np.repeat(labels, routing.top_k), "expert": routing.experts[layer].ravel()})
    table = pd.crosstab(slots["label"], slots["expert"]).reindex(columns=range(routing.n_experts), fill_value=0)
    given_label = table.div(table.sum(axis=1), axis=0)
    overall = table.sum(axis=0) / table.to_numpy().sum()
    return given_label.div(overall.replace(0, np.nan), axis=1).rename_axis(columns="expert")


def load_over_time(snapshots: pd.DataFrame) -> pd.DataFrame:
    """Routing snapshots of the Trainer (step, layer, expert, load) as a (layer, step) × expert table."""
    return snapshots.pivot_table(index=["layer", "step"], columns="expert", values="load")


def _layer_expert_frame(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        values,
        index=pd.Index(range(values.shape[0]), name="layer"),
        columns=pd.Index(range(values.shape[1]), name="expert"),
    )


# ============================================================================ figures


def heatmap(
    frame: pd.DataFrame,
    title: str,
    colorbar: str,
    ax: plt.Axes | None = None,
    center: float | None = None,
    fmt: str = ".2f",
    **kwargs,
) -> plt.Axes:
    """A titled, labeled seaborn heatmap with a color bar (annotated when small enough)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.5, 2.0 + 0.75 * frame.shape[1]), max(3.0, 1.6 + 0.5 * frame.shape[0])))
    annotate = frame.size <= 160
    sns.heatmap(
        frame,
        ax=ax,
        annot=annotate,
        fmt=fmt,
        cmap="vlag" if center is not None else "rocket_r",
        center=center,
        cbar_kws={"label": colorbar},
        annot_kws={"fontsize": 8},
        **kwargs,
    )
    ax.set_title(title)
    return ax


def expert_palette(n_experts: int) -> list[str]:
    return [f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}" for r, g, b in sns.color_palette("tab10" if n_experts <= 10 else "tab20", n_experts)]


def _expert_style(color: str) -> str:
    return f"background:{color}55;border-bottom:2px solid {color}"


def expert_span(shown_html: str, expert: int, palette: list[str]) -> str:
    """HTML (already escaped) marked with its expert's color, the expert named on hover."""
    return f'<span title="expert {expert}" style="{_expert_style(palette[expert])}">{shown_html}</span>'


def expert_legend(palette: list[str], n_experts: int) -> str:
    """One colored label per expert: the key of :func:`expert_span`'s colors."""
    return " ".join(
        f'<span style="{_expert_style(palette[e])};padding:0 6px">expert {e}</span>' for e in range(n_experts)
    )


def routing_html(text: str, model: Transformer, layer: int, title: str = "", tokenizer=None) -> str:
    """The text with each token colored by its top-1 expert in ``layer``, with a legend.

    ``tokenizer``: the model's (default: bytes). The text is routed in consecutive chunks of
    the context window (each token sees the tokens before it in its chunk), up to 64 windows.
    A character split over several tokens (an accent, for bytes) takes the color of the
    token holding its first byte, so no character is ever cut.
    """
    tokenizer = model_tokenizer(tokenizer, model.config.vocab_size, "route")
    window = model.config.context_window
    ids = tokenizer.encode_array(text)[: window * 64]
    experts: list[int] = []
    for start in range(0, len(ids), window):
        experts.extend(collect_routing(model, ids[None, start : start + window]).experts[layer][:, 0].tolist())
    starts = np.cumsum([0] + [len(tokenizer.pieces[t]) for t in ids])[:-1]  # each token's first byte
    shown_by_token: dict[int, list[str]] = {}
    position = 0
    for ch in b"".join(tokenizer.pieces[t] for t in ids).decode("utf-8", errors="replace"):
        token = int(np.searchsorted(starts, position, side="right")) - 1
        shown_by_token.setdefault(token, []).append("⏎<br>" if ch == "\n" else html.escape(ch))
        position += len(ch.encode("utf-8"))
    palette = expert_palette(model.config.routed_experts)
    spans = [expert_span("".join(shown), experts[token], palette) for token, shown in shown_by_token.items()]
    legend = expert_legend(palette, model.config.routed_experts)
    heading = f"<h4>{html.escape(title)}</h4>" if title else ""
    unit = tokenizer.unit
    return (
        f'<div class="moelab-routing">{heading}<p style="font-size:90%">Top-1 expert of each {unit} in layer {layer} '
        f"(hover a {unit} for its expert): {legend}</p>"
        f'<div style="font-family:monospace;line-height:1.9;white-space:pre-wrap">{"".join(spans)}</div></div>'
    )


def _grid(n_panels: int, width: float, height: float) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = n_panels if n_panels <= 4 else 3
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def plot_expert_load(load: pd.DataFrame, title: str) -> plt.Figure:
    """Layers × experts load; the color is centred on the uniform share 1/N."""
    uniform = 1.0 / load.shape[1]
    ax = heatmap(load, f"{title}\n(uniform share 1/{load.shape[1]} = {uniform:.3f} is white)", "share of routed token slots", center=uniform, fmt=".3f")
    ax.set(xlabel="expert", ylabel="layer")
    ax.figure.tight_layout()
    return ax.figure


def plot_load_over_time(snapshots: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per layer: expert load (columns) at each evaluation step (rows) during training."""
    table = load_over_time(snapshots)
    layers = sorted(table.index.get_level_values("layer").unique())
    n_experts = table.shape[1]
    fig, axes = _grid(len(layers), 4.4, max(3.0, 1.2 + 0.22 * len(table.loc[layers[0]])))
    vmax = float(table.to_numpy().max())
    for layer, ax in zip(layers, axes):
        sns.heatmap(table.loc[layer], ax=ax, cmap="vlag", center=1.0 / n_experts, vmin=0, vmax=vmax,
                    cbar_kws={"label": "share of routed slots"})
        ax.set(title=f"layer {layer}", xlabel="expert", ylabel="training step")
    fig.suptitle(f"{title} (uniform share 1/{n_experts} is white)")
    fig.tight_layout()
    return fig


def plot_balance(stats: pd.DataFrame, title: str) -> plt.Figure:
    """Per layer: load CV, MaxVio and min/max ratio, router entropies against log N, decisive tokens."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    layers = stats.index.astype(str)
    axes[0].bar(layers, stats["load_cv"], color="tab:blue", label="CV of load (0 = balanced)")
    axes[0].plot(layers, stats["maxvio"], "s-", color="tab:red", label="MaxVio: (max − mean) / mean load")
    axes[0].plot(layers, stats["min_max_ratio"], "o-", color="tab:orange", label="min / max load (1 = balanced)")
    top = max(1.0, stats["load_cv"].max(), stats["maxvio"].max()) * 1.35
    axes[0].set(title="Balance of the expert load", xlabel="layer", ylabel="ratio of loads (no unit)", ylim=(0, top))
    axes[0].legend(fontsize=8)
    axes[1].plot(layers, stats["token_entropy"], "o-", label="per token (mean)")
    axes[1].plot(layers, stats["mean_entropy"], "s-", label="of the mean distribution")
    axes[1].axhline(stats["max_entropy"].iloc[0], color="gray", ls="--", label="log N (uniform)")
    axes[1].set(title="Router entropy", xlabel="layer", ylabel="nats", ylim=(0, stats["max_entropy"].iloc[0] * 1.1))
    axes[1].legend(fontsize=8)
    axes[2].bar(layers, stats["top1_over_0_9"], color="tab:green")
    axes[2].set(title="Decisive tokens", xlabel="layer", ylabel="share with top-1 gate weight > 0.9", ylim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_coactivation(routing: Routing, title: str) -> plt.Figure:
    """One panel per layer: share of tokens that choose experts i and j together."""
    fig, axes = _grid(routing.n_layers, 4.4, 3.8)
    for layer, ax in enumerate(axes):
        matrix = coactivation(routing, layer)
        mask = np.eye(routing.n_experts, dtype=bool)  # the diagonal is the load, shown elsewhere
        heatmap(matrix, f"layer {layer}", "share of tokens", ax=ax, mask=mask, fmt=".2f")
        ax.set(xlabel="expert", ylabel="expert")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_specialization(lift: pd.DataFrame, labels: np.ndarray, title: str, ylabel: str) -> plt.Figure:
    """Labels × experts lift on a log2 color scale centred on 1 (no specialization), annotated with the lift."""
    counts = pd.Series(np.asarray(labels)).value_counts()
    shown = lift.copy()
    shown.index = [f"{label} ({counts.get(label, 0):,} tokens)" for label in lift.index]
    with np.errstate(divide="ignore"):
        log_lift = np.log2(shown.astype(float)).clip(-2, 2)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.8 + 0.75 * lift.shape[1]), max(3.0, 1.6 + 0.5 * lift.shape[0])))
    sns.heatmap(log_lift, ax=ax, cmap="vlag", center=0, vmin=-2, vmax=2, annot=shown.round(2), fmt="",
                annot_kws={"fontsize": 8}, cbar_kws={"label": "log2 of P(expert | label) / P(expert)"})
    ax.set_title(f"{title}\n(1 = the expert's usual share; 2 = twice it; 0.5 = half)")
    ax.set(xlabel="expert", ylabel=ylabel)
    fig.tight_layout()
    return fig
