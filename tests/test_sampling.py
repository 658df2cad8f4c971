import html
import re

import pytest
import torch

from moelab import ByteTokenizer, ModelConfig, Transformer, save_checkpoint
from moelab.views.analysis import expert_legend, expert_palette
from moelab.generate.sampling import SampleSettings, generate_texts, prepare_prompt, samples_markdown, stream
from moelab.runs.files import list_runs
from moelab.views.widgets import NO_RUNS, SamplerUI
from moelab.generate.loop import generate

TOK = ByteTokenizer()


def small_model(**changes) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(n_layers=2, n_heads=2, n_embd=16, context_window=16, n_experts=4, top_k=2, expert_hidden=16)
    return Transformer(config.replace(**changes)).eval()


def test_prompt_policies():
    empty = prepare_prompt("", 16)
    assert empty.text == "\n" and "empty prompt" in empty.notes[0]
    long = prepare_prompt("Era uma vez um homem — e ponto.", 16)
    assert long.ids.shape == (1, 16) and "cropped to its last 16" in long.notes[0]
    assert bytes(long.ids[0].tolist()) == "Era uma vez um homem — e ponto.".encode()[-16:]
    assert prepare_prompt("Olá", 16).notes == []


def test_streamed_text_equals_decoding_the_generated_bytes():
    model = small_model()
    settings = SampleSettings(max_new_tokens=40, temperature=1.0, top_p=None, seed=5, num_samples=2)
    texts, prompt = generate_texts(model, "Capitu", settings)
    reference = generate(model, prompt.ids.repeat(2, 1), 40, temperature=1.0, seed=5)
    assert texts == [TOK.decode(row[len(prompt.ids[0]):]) for row in reference]
    assert generate_texts(model, "Capitu", settings)[0] == texts  # a seed makes it reproducible


def test_stream_reports_experts_and_stops_when_asked():
    model = small_model()
    pieces = list(stream(model, prepare_prompt("a", 16), SampleSettings(max_new_tokens=10, seed=0), expert_layer=1))
    assert all(p.expert in range(4) for p in pieces if p.expert is not None) and any(p.expert is not None for p in pieces)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 3

    stopped = list(stream(model, prepare_prompt("a", 16), SampleSettings(max_new_tokens=50, seed=0), should_stop=stop))
    assert len("".join(p.text for p in stopped).encode()) <= 3 * 3  # at most 3 bytes (each shown as ≤ 3 bytes)
    with pytest.raises(ValueError, match="layer"):
        list(stream(model, prepare_prompt("a", 16), SampleSettings(), expert_layer=5))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 300}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"num_samples": 40}, "number of samples"),
    ],
)
def test_settings_are_checked_with_clear_messages(changes, message):
    with pytest.raises(ValueError, match=message):
        SampleSettings(**changes).check()


def test_samples_markdown():
    settings = SampleSettings(max_new_tokens=5)
    text = samples_markdown("r", "ckpt.pt", [("Olá", settings, ["abc"], prepare_prompt("Olá", 16))])
    assert "# Samples from `r`" in text and "## Prompt: “Olá”" in text and "Olá" + "abc" in text
    assert "max_new_tokens=5" in text


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path))
    good = save_checkpoint(tmp_path / "checkpoints" / "good" / "ckpt_0000010.pt", small_model())
    broken = tmp_path / "checkpoints" / "broken" / "ckpt_0000010.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(good.read_bytes()[:1000])
    return tmp_path


def test_widget_generates_deterministically_and_colors_by_expert(runs):
    ui = SamplerUI(default_run="good", threaded=False)
    assert set(list_runs()) == {"good", "broken"} and ui.run.value == "good"
    assert "4 experts top-2" in ui.status.value
    assert (ui.max_new_tokens.description, ui.color.description) == ("max new bytes", "color bytes by top-1 expert")
    ui.prompt.value, ui.max_new_tokens.value, ui.seed.value = "Capitu", 30, 3
    ui.generate_button.click()
    first = ui.output.value
    assert "Sample 1" in first and "Capitu" in first and "done: 30 bytes at" in ui.status.value
    ui.generate_button.click()
    assert ui.output.value == first
    ui.num_samples.value, ui.color.value, ui.layer.value = 2, True, 1
    ui.generate_button.click()
    assert "Sample 2" in ui.output.value and 'title="expert' in ui.output.value
    assert expert_legend(expert_palette(4), 4) in ui.output.value  # the legend routing_html shows too
    assert not ui.generate_button.disabled and ui.stop_button.disabled


@pytest.mark.parametrize(
    "widget, value, message",
    [
        ("temperature", -1.0, "temperature must be"),
        ("top_k", 999, "top_k must be"),
        ("max_new_tokens", 10**6, "max new tokens"),
    ],
)
def test_widget_answers_bad_input_in_the_ui(runs, widget, value, message):
    ui = SamplerUI(default_run="good", threaded=False)
    getattr(ui, widget).value = value
    ui.generate_button.click()
    assert message in ui.status.value and "#b00020" in ui.status.value and ui.output.value == ""


def test_widget_notes_empty_and_long_prompts(runs):
    ui = SamplerUI(default_run="good", threaded=False)
    ui.prompt.value, ui.max_new_tokens.value = "", 5
    ui.generate_button.click()
    assert "empty prompt: starting from a newline" in ui.status.value
    ui.prompt.value = "Não consultes dicionários. Casmurro não está aqui no sentido que eles lhe dão."
    ui.generate_button.click()
    assert "cropped to its last 16" in ui.status.value


def test_widget_shows_a_checkpoint_that_does_not_load(runs):
    ui = SamplerUI(default_run="good", threaded=False)
    ui.run.value = "broken"
    assert "truncated or corrupted" in ui.status.value
    ui.generate_button.click()
    assert "truncated or corrupted" in ui.status.value and ui.output.value == ""


def test_widget_without_runs_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path))
    ui = SamplerUI(threaded=False)
    assert ui.run.value == NO_RUNS and "notebook 02" in ui.status.value
    ui.generate_button.click()
    assert "notebook 02" in ui.status.value


def test_threaded_generation_and_stop(runs):
    ui = SamplerUI(default_run="good", threaded=True)
    ui.max_new_tokens.value = 4000
    ui.generate_button.click()
    ui.stop_button.click()
    ui._thread.join(timeout=30)
    assert not ui._thread.is_alive()
    assert "stopped" in ui.status.value


# ---------------------------------------------------------------------------- BPE models


@pytest.fixture(scope="module")
def bpe():
    from moelab.data.tokenizer import BPETokenizer

    text = "Capitu tinha olhos de ressaca. A vida é uma ópera, ação e coração. Ao vencedor, as batatas! "
    return BPETokenizer.train([text * 30], 290)


def test_bpe_prompt_is_the_tokenizers_ids_cropped_in_tokens(bpe):
    text = "Capitu tinha olhos de ressaca; a vida é uma ópera, ao vencedor as batatas."
    ids = bpe.encode(text)
    assert len(text.encode()) > 16 < len(ids)
    prompt = prepare_prompt(text, 16, bpe)
    assert prompt.ids[0].tolist() == ids[-16:] and f"prompt of {len(ids)} tokens cropped to its last 16" in prompt.notes[0]
    assert prompt.text == bpe.decode(ids[-16:])
    assert prepare_prompt("ação", 16, bpe).ids[0].tolist() == bpe.encode("ação")


def test_bpe_streamed_text_equals_decoding_the_generated_tokens(bpe):
    model = small_model(vocab_size=290)
    settings = SampleSettings(max_new_tokens=30, temperature=1.0, top_p=None, seed=5, num_samples=2)
    texts, prompt = generate_texts(model, "Capitu", settings, bpe)
    reference = generate(model, prompt.ids.repeat(2, 1), 30, temperature=1.0, seed=5)
    assert texts == [bpe.decode(row[len(prompt.ids[0]):].tolist()) for row in reference]
    with pytest.raises(ValueError, match="vocabulary of 290 tokens, the tokenizer 256"):
        generate_texts(model, "Capitu", settings)  # the default tokenizer is bytes


def test_widget_samples_a_bpe_checkpoint_with_its_own_tokenizer(bpe, tmp_path, monkeypatch):
    from moelab.data.tokenizer import tokenizer_record

    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path))
    model = small_model(vocab_size=290)
    save_checkpoint(tmp_path / "checkpoints" / "bpe" / "ckpt_0000010.pt", model, extra={"tokenizer": tokenizer_record(bpe)})
    ui = SamplerUI(default_run="bpe", threaded=False)
    assert "context 16 tokens" in ui.status.value
    assert (ui.max_new_tokens.description, ui.color.description) == ("max new tokens", "color tokens by top-1 expert")
    ui.prompt.value, ui.max_new_tokens.value, ui.seed.value = "Capitu", 12, 3
    ui.generate_button.click()
    assert "done: 12 tokens at" in ui.status.value
    want = generate_texts(model, "Capitu", ui.settings(), bpe)[0][0]
    shown = html.unescape(re.sub(r"<[^>]+>", "", ui.output.value))  # the text without its markup
    assert len(want) >= 12 and shown == "Sample 1Capitu" + want


def test_widget_samples_with_the_compiled_step_when_ticked(runs, monkeypatch):
    from moelab.generate.compiled import CompiledDecoder

    steps = []
    step = CompiledDecoder.__call__
    monkeypatch.setattr(CompiledDecoder, "__call__", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    ui = SamplerUI(default_run="good", threaded=False)
    ui.prompt.value, ui.max_new_tokens.value, ui.seed.value = "Capitu", 30, 3
    ui.generate_button.click()
    uncompiled = ui.output.value
    ui.compile_step.value = True
    ui.generate_button.click()
    assert ui.output.value == uncompiled and len(steps) > 0  # the same text, through the compiled step
