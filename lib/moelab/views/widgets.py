"""The interactive sampler of notebook 04, built with ipywidgets on moelab.generate.sampling.

Results live in widget state (``output.value``, ``status.value``), so the UI is
testable without a browser: set widget values, call ``generate_button.click()``.
Generation runs in a background thread in JupyterLab, so the Stop button works and
the kernel stays responsive; it is also bounded (``MAX_NEW_TOKENS``, ``time_limit_s``).
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as w

from moelab.runs.checkpoint import CheckpointError, load_model, load_tokenizer
from moelab.nn.model import Transformer
from moelab.generate.sampling import Piece, SampleSettings, prepare_prompt, stream
from moelab.runs.files import list_runs
from moelab.runs.files import latest_checkpoint

DEFAULT_PROMPT = "Capitu olhou para mim e disse"
NO_RUNS = "(no trained runs: train one in notebook 02)"


class SamplerUI:
    """Pick a run, write a prompt, Generate: the text streams in, optionally colored by expert."""

    def __init__(
        self,
        runs: list[str] | None = None,
        default_run: str | None = None,
        threaded: bool = True,
        time_limit_s: float = 120.0,
    ) -> None:
        runs = list_runs() if runs is None else runs
        self.threaded = threaded
        self.time_limit_s = time_limit_s
        self._models: dict[str, Transformer] = {}
        self._stop = False
        self._thread: threading.Thread | None = None

        style = {"description_width": "120px"}
        self.run = w.Dropdown(options=runs or [NO_RUNS], value=default_run if default_run in runs else (runs or [NO_RUNS])[0], description="run", style=style)
        self.prompt = w.Textarea(value=DEFAULT_PROMPT, description="prompt", layout=w.Layout(width="95%", height="70px"), style=style)
        self.max_new_tokens = w.IntText(value=300, description="max new bytes", style=style)
        self.temperature = w.FloatText(value=0.8, step=0.05, description="temperature", style=style)
        self.top_k = w.IntText(value=0, description="top-k (0: off)", style=style)
        self.top_p = w.FloatText(value=0.95, step=0.05, description="top-p (1: off)", style=style)
        self.seed = w.IntText(value=0, description="seed", style=style)
        self.num_samples = w.IntSlider(value=1, min=1, max=4, description="samples", style=style)
        self.color = w.Checkbox(value=False, description="color bytes by top-1 expert", indent=False)
        self.layer = w.IntSlider(value=0, min=0, max=0, description="layer", style=style)
        self.compile_step = w.Checkbox(value=False, indent=False,
                                       description="compiled decoding (1 sample on a CPU; compiles once, seconds)")  # fmt: skip
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.status = w.HTML(value="")
        self.output = w.HTML(value="")
        for widget, name in (
            (self.prompt, "moelab-prompt"),
            (self.generate_button, "moelab-generate"),
            (self.stop_button, "moelab-stop"),
            (self.status, "moelab-status"),
            (self.output, "moelab-output"),
        ):
            widget.add_class(name)
        self.generate_button.on_click(self._on_generate)
        self.stop_button.on_click(self._on_stop)
        self.run.observe(lambda _: self._on_run_change(), names="value")
        self.widget = w.VBox(
            [
                self.run,
                self.prompt,
                w.HBox([w.VBox([self.max_new_tokens, self.temperature, self.top_k]), w.VBox([self.top_p, self.seed, self.num_samples])]),
                w.HBox([self.color, self.layer]),
                self.compile_step,
                w.HBox([self.generate_button, self.stop_button]),
                self.status,
                self.output,
            ]
        )
        self._on_run_change()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ----------------------------------------------------------------- helpers
    def settings(self) -> SampleSettings:
        return SampleSettings(
            max_new_tokens=self.max_new_tokens.value,
            temperature=self.temperature.value,
            top_k=self.top_k.value or None,
            top_p=None if self.top_p.value >= 1 else self.top_p.value,
            seed=self.seed.value,
            num_samples=self.num_samples.value,
            compile_step=self.compile_step.value,
        )

    def model(self) -> Transformer:
        """The selected run's latest checkpoint (loaded once, with its tokenizer: :meth:`tokenizer`)."""
        name = self.run.value
        if name == NO_RUNS:
            raise CheckpointError("no trained runs under data/checkpoints/: train one with notebook 02 first")
        if name not in self._models:
            path = latest_checkpoint(name)
            self._models[name] = (load_model(path), load_tokenizer(path))
        return self._models[name][0]

    def tokenizer(self):
        """The selected run's tokenizer (from its checkpoint)."""
        self.model()
        return self._models[self.run.value][1]

    def _unit(self) -> str:
        return f"{self.tokenizer().unit}s"

    def _say(self, message: str, kind: str = "info") -> None:
        color = {"info": "#555", "error": "#b00020", "note": "#8a6d00"}[kind]
        self.status.value = f'<span style="color:{color}">{message}</span>'

    def _on_run_change(self) -> None:
        try:
            model = self.model()
        except (CheckpointError, OSError) as err:
            self._say(html.escape(str(err)), "error")
            return
        config, unit = model.config, self._unit()
        self.layer.max = max(config.n_layers - 1, 0)
        self.color.disabled = self.layer.disabled = not config.is_moe
        self.max_new_tokens.description, self.color.description = f"max new {unit}", f"color {unit} by top-1 expert"
        counts = config.param_counts()
        self._say(
            f"{html.escape(self.run.value)}: {config.n_layers} layers × {config.n_embd}, "
            f"{config.n_experts} experts top-{config.top_k}, context {config.context_window} {unit}, "
            f"{counts['active'] / 1e6:.2f} M active / {counts['total'] / 1e6:.2f} M parameters"
        )

    def _on_stop(self, _=None) -> None:
        self._stop = True

    def _on_generate(self, _=None) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # one generation at a time
        self._stop = False
        if self.threaded:
            self._thread = threading.Thread(target=self.run_generation, daemon=True)
            self._thread.start()
        else:
            self.run_generation()

    # -------------------------------------------------------------- generation
    def run_generation(self) -> None:
        """Generate with the current settings, streaming into ``output``; errors go to ``status``."""
        try:
            settings = self.settings()
            settings.check()
            model = self.model()
        except (ValueError, CheckpointError, OSError) as err:
            self._say(html.escape(str(err)), "error")
            return
        tokenizer = self.tokenizer()
        prompt = prepare_prompt(self.prompt.value, model.config.context_window, tokenizer)
        notes = "; ".join(prompt.notes)
        layer = self.layer.value if self.color.value and model.config.is_moe else None
        samples: list[list[Piece]] = [[] for _ in range(settings.num_samples)]
        self.generate_button.disabled, self.stop_button.disabled = True, False
        started = time.monotonic()
        rate, last_draw, stopped, generated = 0.0, 0.0, False, 0

        def should_stop() -> bool:
            return self._stop or time.monotonic() - started > self.time_limit_s

        try:
            for piece in stream(model, prompt, settings, expert_layer=layer, should_stop=should_stop, tokenizer=tokenizer):
                samples[piece.sample].append(piece)
                rate, generated = piece.tokens_per_s or rate, piece.generated
                if time.monotonic() - last_draw > 0.1:
                    self.output.value = self._render(prompt.text, samples, model.config.routed_experts)
                    self._say(f"generating… {rate:,.0f} {self._unit()}/s" + (f" · {html.escape(notes)}" if notes else ""),
                              "note" if notes else "info")  # fmt: skip
                    last_draw = time.monotonic()
            stopped = should_stop()
        except Exception as err:  # shown in the UI, never a traceback in the output area
            self._say(f"generation failed: {html.escape(type(err).__name__)}: {html.escape(str(err))}", "error")
            return
        finally:
            self.generate_button.disabled, self.stop_button.disabled = False, True
        self.output.value = self._render(prompt.text, samples, model.config.routed_experts)
        unit = self._unit()
        summary = f"{'stopped' if stopped else 'done'}: {generated * settings.num_samples:,} {unit} at {rate:,.0f} {unit}/s"
        self._say(summary + (f" · {html.escape(notes)}" if notes else ""), "note" if notes else "info")

    def _render(self, prompt_text: str, samples: list[list[Piece]], n_experts: int) -> str:
        from moelab.views.analysis import expert_legend, expert_palette, expert_span

        palette = expert_palette(max(n_experts, 1))
        blocks = []
        for i, pieces in enumerate(samples, start=1):
            body = []
            for piece in pieces:
                text = html.escape(piece.text)
                body.append(text if piece.expert is None else expert_span(text, piece.expert, palette))
            blocks.append(
                f'<div class="moelab-sample"><b>Sample {i}</b>'
                f'<pre style="white-space:pre-wrap;font-size:95%"><span style="color:#888">{html.escape(prompt_text)}</span>{"".join(body)}</pre></div>'
            )
        legend = ""
        if any(p.expert is not None for s in samples for p in s):
            legend = f"<div>{expert_legend(palette, n_experts)}</div>"
        return legend + "".join(blocks)
