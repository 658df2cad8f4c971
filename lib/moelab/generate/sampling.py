"""Sampling from a trained model: prompts, settings, streaming, and sample reports.

Used by notebook 04 (the widget UI and its headless mode) and by tests. Policies,
stated once here:

- Tokens are the model's tokenizer's (``tokenizer=``, default bytes; a checkpoint's own
  comes from :func:`moelab.runs.checkpoint.load_tokenizer`).
- An empty prompt starts from a newline (the start of a paragraph).
- temperature 0 is greedy decoding (the most likely token every time); a negative
  temperature is an error.
- A prompt longer than the context window is cropped to its last
  ``context_window`` tokens, and the caller is told.
- Streamed text never shows half a multi-byte character, whether a token holds part of
  one or several: each piece is colored by the routing of the token that completed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from moelab.generate.next_token import check_sampling_args
from moelab.nn.model import Transformer
from moelab.data.tokenizer import ByteTokenizer, model_tokenizer
from moelab.generate.loop import iter_generate

EMPTY_PROMPT = "\n"
MAX_NEW_TOKENS = 4000  # a bound on one request, so an interactive UI never hangs for long


@dataclass
class SampleSettings:
    max_new_tokens: int = 300
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = 0.95
    seed: int | None = 0
    num_samples: int = 1
    compile_step: bool = False  # one sample on a CPU: the compiled one-token step (seconds to compile, once)

    def check(self, vocab_size: int = 256) -> None:
        """Raise ValueError with a message a person can act on."""
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens!r}")
        if not isinstance(self.num_samples, int) or not 1 <= self.num_samples <= 16:
            raise ValueError(f"number of samples must be between 1 and 16, got {self.num_samples!r}")
        check_sampling_args(self.temperature, self.top_k, self.top_p, vocab_size)


@dataclass
class Prompt:
    """A prompt ready for the model, with notes about what was changed."""

    text: str
    ids: torch.Tensor  # (1, T)
    notes: list[str] = field(default_factory=list)


def prepare_prompt(text: str | bytes, context_window: int, tokenizer=None) -> Prompt:
    """The prompt as the model's tokens, with notes on anything changed or odd.

    ``bytes`` are taken as they are (a byte-level model can continue any bytes); text
    that carries undecodable bytes as surrogate escapes (``errors="surrogateescape"``)
    gets those bytes back. Invalid UTF-8 is noted, and shown as U+FFFD (a BPE model
    sees the U+FFFD: its tokens are made from text).
    """
    tokenizer = tokenizer or ByteTokenizer()
    notes = []
    if isinstance(text, (bytes, bytearray)):
        data = bytes(text)
    elif isinstance(text, str):
        try:
            data = text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"prompt: the character {text[err.start]!r} at position {err.start} is a lone surrogate with no "
                "UTF-8 bytes; remove it, or pass the prompt as bytes"
            ) from None
    else:
        raise TypeError(f"prompt must be str or bytes, got {type(text).__name__}")
    if not data:
        notes.append("empty prompt: starting from a newline")
        data = EMPTY_PROMPT.encode("utf-8")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        notes.append(
            f"prompt is not valid UTF-8 (byte {err.start}: {data[err.start]:02x}); the model sees the bytes as given, "
            "shown here as U+FFFD"
        )
    ids = list(data) if tokenizer.name == "bytes" else tokenizer.encode(data.decode("utf-8", errors="replace"))
    if len(ids) > context_window:
        notes.append(f"prompt of {len(ids)} {tokenizer.unit}s cropped to its last {context_window} (the context window)")
        ids = ids[-context_window:]
    return Prompt(tokenizer.decode(ids), torch.tensor([ids], dtype=torch.long), notes)


@dataclass
class Piece:
    """Newly decoded text of one sample, and the top-1 expert of the token that completed it."""

    sample: int
    text: str
    expert: int | None
    tokens_per_s: float
    generated: int  # tokens generated per sample so far


def stream(
    model: Transformer,
    prompt: Prompt,
    settings: SampleSettings,
    expert_layer: int | None = None,
    should_stop=lambda: False,
    tokenizer=None,
) -> Iterator[Piece]:
    """Generate ``settings.num_samples`` continuations at once, yielding text as it completes.

    ``expert_layer`` asks for the top-1 expert of each token in that layer (MoE models);
    ``should_stop`` is checked between tokens (a Stop button); ``tokenizer``: the model's
    (default bytes).
    """
    tokenizer = model_tokenizer(tokenizer, model.config.vocab_size, "sample")
    settings.check(model.config.vocab_size)
    record = expert_layer is not None and model.config.is_moe
    if record and not 0 <= expert_layer < model.config.n_layers:
        raise ValueError(f"layer must be in 0..{model.config.n_layers - 1}, got {expert_layer}")
    device = next(model.parameters()).device
    ids = prompt.ids.to(device).repeat(settings.num_samples, 1)
    decoders = [tokenizer.stream_decoder() for _ in range(settings.num_samples)]
    start, produced = time.perf_counter(), 0
    steps = iter_generate(
        model,
        ids,
        settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        seed=settings.seed,
        record_routing=record,
        compile_step=settings.compile_step,
    )
    for step in steps:
        produced += 1
        rate = produced * settings.num_samples / max(time.perf_counter() - start, 1e-9)
        for sample, token in enumerate(step.tokens.tolist()):
            text = decoders[sample].feed([token])
            if text:
                expert = int(step.routing[expert_layer].experts[sample, 0]) if record else None
                yield Piece(sample, text, expert, rate, produced)
        if should_stop():
            break
    for sample, decoder in enumerate(decoders):
        rest = decoder.flush()
        if rest:
            yield Piece(sample, rest, None, 0.0, produced)


def generate_texts(
    model: Transformer, prompt_text: str, settings: SampleSettings, tokenizer=None
) -> tuple[list[str], Prompt]:
    """The complete continuations (new text only) of a prompt, and the prompt as used."""
    prompt = prepare_prompt(prompt_text, model.config.context_window, tokenizer)
    texts = [""] * settings.num_samples
    for piece in stream(model, prompt, settings, tokenizer=tokenizer):
        texts[piece.sample] += piece.text
    return texts, prompt


def samples_markdown(
    run_name: str, checkpoint: str, results: list[tuple[str, SampleSettings, list[str], Prompt]]
) -> str:
    """A readable report of samples: one section per prompt with the settings used."""
    lines = [f"# Samples from `{run_name}`", "", f"Checkpoint: `{checkpoint}`", ""]
    for prompt_text, settings, texts, prompt in results:
        shown = prompt_text.replace("\n", "⏎") or "(empty)"
        lines += [
            f"## Prompt: “{shown}”",
            "",
            "Settings: " + ", ".join(f"{k}={v}" for k, v in asdict(settings).items()),
            "",
        ]
        lines += [f"_{note}_" for note in prompt.notes] + ([""] if prompt.notes else [])
        for i, text in enumerate(texts, start=1):
            lines += [f"**Sample {i}**", "", "```text", (prompt_text or prompt.text) + text, "```", ""]
    return "\n".join(lines)
