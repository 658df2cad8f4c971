"""How the Trainer shows its progress: a tqdm bar, or plain status lines for terminals.

``MOELAB_PROGRESS=log`` replaces the bar by one line every few seconds (and one at the
end) with the run, step, train loss, last validation bits per byte, tokens per second,
elapsed and estimated remaining time: a bar drawn inside a notebook kernel run by
papermill is never seen, lines echoed from the kernel's output are.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm



def format_duration(seconds: float) -> str:
    """2h05m, 3m07s or 42s."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressBar:
    """A tqdm bar over the budget (0 → 1000), its postfix showing the latest metric row."""

    def __init__(self, run_name: str, enabled: bool) -> None:
        self.bar = tqdm(
            total=1000,
            desc=run_name,
            disable=not enabled,
            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
        )

    def show_row(self, row: dict, val_bpb: float) -> None:
        self.bar.set_postfix(
            step=row["step"],
            loss=f"{row['loss']:.3f}",
            bpb=f"{val_bpb:.3f}" if not math.isnan(val_bpb) else "-",
            window=row["window"],
            tok_s=f"{row['tokens_per_s']:.0f}",
            refresh=False,
        )

    def update(self, progress: float, step: int, tokens: int, elapsed: float) -> None:
        self.bar.update(int(1000 * progress) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class ProgressLog:
    """One plain status line every ``interval_s`` seconds of wall time, and one at the end."""

    def __init__(self, run_name: str, interval_s: float = 10.0, out: TextIO | None = None) -> None:
        self.run_name, self.interval_s, self.out = run_name, interval_s, out
        self.loss = math.nan
        self.val_bpb = math.nan
        self.state: tuple[float, int, int, float] | None = None  # progress, step, tokens, elapsed
        self.last_print = time.monotonic()
        self.last_tokens, self.last_elapsed = None, None
        self.first_tokens, self.first_elapsed = None, None

    def show_row(self, row: dict, val_bpb: float) -> None:
        self.loss = row["loss"]
        if not math.isnan(val_bpb):
            self.val_bpb = val_bpb

    def update(self, progress: float, step: int, tokens: int, elapsed: float) -> None:
        if self.first_tokens is None:  # the state training starts (or resumes) from
            self.first_tokens, self.first_elapsed = tokens, elapsed
            self.last_tokens, self.last_elapsed = tokens, elapsed
        self.state = (progress, step, tokens, elapsed)
        if time.monotonic() - self.last_print >= self.interval_s:
            self._print()

    def close(self) -> None:
        if self.state is not None:
            self._print(final=True)

    def line(self, final: bool = False) -> str:
        progress, step, tokens, elapsed = self.state
        since_tokens, since_elapsed = (self.first_tokens, self.first_elapsed) if final else (self.last_tokens, self.last_elapsed)
        seconds = elapsed - since_elapsed  # the speed since the last line (the whole session at the end)
        speed = (tokens - since_tokens) / seconds if seconds > 0 else math.nan
        left = elapsed * (1 - progress) / progress if progress > 0 else math.inf
        parts = [
            f"{self.run_name}: step {step}",
            f"loss {self.loss:.3f}" if not math.isnan(self.loss) else "loss -",
            f"val {self.val_bpb:.3f} bpb" if not math.isnan(self.val_bpb) else "val -",
            f"{speed:,.0f} tok/s" if math.isfinite(speed) else "- tok/s",
            f"elapsed {format_duration(elapsed)}",
            ("done" if progress >= 1 else f"stopped at {progress:.0%}") if final else f"left ~{format_duration(left)}",
        ]
        return " · ".join(parts)

    def _print(self, final: bool = False) -> None:
        print(self.line(final), file=self.out or sys.stdout, flush=True)
        self.last_print = time.monotonic()
        self.last_tokens, self.last_elapsed = self.state[2], self.state[3]


def make_progress(run_name: str, enabled: bool, interval_s: float = 10.0) -> ProgressBar | ProgressLog:
    """The display for one training session: status lines if MOELAB_PROGRESS=log, else the bar."""
    if enabled and os.environ.get("MOELAB_PROGRESS", "").strip().lower() == "log":
        return ProgressLog(run_name, interval_s)
    return ProgressBar(run_name, enabled)
