import math

import pytest
import torch
import torch.nn.functional as F

from moelab import ModelConfig, Transformer, save_checkpoint
from moelab.data import clean_text
from moelab.evaluate.cli import main
from moelab.evaluate.scoring import score_bytes, score_text


def small_model() -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(n_layers=2, n_heads=2, n_embd=16, context_window=8, n_experts=4, expert_hidden=16)
    return Transformer(config).double().eval()


def reference_nats(model: Transformer, data: bytes, stride: int) -> float:
    """Byte by byte: byte t is predicted in the first window (starts 0, stride, 2·stride, …) that reaches it."""
    window = model.config.context_window
    sequence = torch.tensor(list(b"\n" + data))
    total = 0.0
    for t in range(len(data)):
        k = 0
        while min(k * stride + window, len(data)) <= t:
            k += 1
        begin = k * stride
        logits = model(sequence[begin : t + 1].unsqueeze(0)).logits[0, -1]
        total += F.cross_entropy(logits.unsqueeze(0), sequence[t + 1].unsqueeze(0)).item()
    return total


@pytest.mark.parametrize("stride", [1, 3, 4, 8])
@pytest.mark.parametrize("length", [1, 5, 8, 9, 23])
def test_every_byte_is_scored_once_with_its_window(stride, length):
    model = small_model()
    data = "Ao vencedor, as batatas!"[:length].encode()
    result = score_bytes(model, data, stride=stride, batch_size=3)
    assert result.bytes == len(data)
    assert result.nats == pytest.approx(reference_nats(model, data, stride), rel=1e-9)


def test_untrained_model_is_near_eight_bits_and_cleaning_is_optional(tmp_path):
    model = Transformer(ModelConfig(n_layers=1, n_heads=2, n_embd=16, context_window=16, n_experts=2, top_k=1))
    text = "Não consultes dicionários.\nCasmurro não está aqui no sentido que eles lhe dão, mas no que lhe pôs o vulgo de homem calado e metido consigo.\n"
    result = score_text(model, text)
    assert abs(result.bits_per_byte - 8.0) < 0.5
    assert result.bytes == len(text.encode())
    assert score_text(model, text, clean=True).bytes == len(clean_text(text).encode())
    assert score_text(model, "").bytes == 0 and math.isnan(score_text(model, "").bits_per_byte)
    with pytest.raises(ValueError, match="stride"):
        score_text(model, text, stride=17)


def test_command_line(tmp_path, capsys):
    model = small_model().float()
    checkpoint = save_checkpoint(tmp_path / "m.pt", model)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Uma noite destas, vindo da cidade,\nencontrei no trem um rapaz.\n")
    b.write_text("Capitu!\n")
    assert main(["--checkpoint", str(checkpoint), str(a), str(b), "--clean", "--save-cleaned", str(tmp_path / "scored")]) == 0
    out = capsys.readouterr().out
    assert "stride 4" in out and "every token scored once" in out and "overall:" in out
    scored = (tmp_path / "scored" / "a.txt").read_bytes()
    assert scored == clean_text(a.read_text()).encode()
    expected = (score_bytes(model, scored).nats + score_bytes(model, b"Capitu!").nats) / math.log(2) / (len(scored) + 7)
    assert f"overall: {expected:.4f} bits per byte" in out
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), str(a)]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


def test_command_lines_run_without_the_sys_modules_warning():
    """``python -m`` runs each command line once: no module of the package imports it first
    (which Python reports as "'moelab.train' found in sys.modules ..." RuntimeWarning)."""
    import subprocess
    import sys

    import moelab.evaluate.cli

    assert not callable(moelab.evaluate)  # a plain module; the function is moelab.evaluate.scoring.score_text
    for module in ("moelab.train", "moelab.evaluate"):
        for flags in ([], ["-W", "error"]):
            done = subprocess.run([sys.executable, *flags, "-m", module, "--help"], capture_output=True, text=True)
            assert done.returncode == 0 and f"usage: moelab {module.split('.')[1]}" in done.stdout, done.stderr
            assert "found in sys.modules" not in done.stderr and "RuntimeWarning" not in done.stderr, done.stderr


def test_score_text_reads_a_checkpoint(tmp_path):
    model = small_model().float()
    checkpoint = save_checkpoint(tmp_path / "m.pt", model)
    assert score_text(checkpoint, "Capitu").nats == pytest.approx(score_text(model, b"Capitu").nats)


# ---------------------------------------------------------------------------- BPE models


def bpe_tokenizer():
    from moelab.data.tokenizer import BPETokenizer

    text = "Capitu tinha olhos de ressaca. A vida é uma ópera e uma grande ópera. Ao vencedor, as batatas! "
    return BPETokenizer.train([text * 30], 280)


def reference_token_nats(model: Transformer, ids: list[int], start: list[int], stride: int) -> float:
    """Token by token, as reference_nats: token t is predicted in the first window that reaches it."""
    window = model.config.context_window
    sequence = torch.tensor(start[-1:] + ids)
    total = 0.0
    for t in range(len(ids)):
        k = 0
        while min(k * stride + window, len(ids)) <= t:
            k += 1
        logits = model(sequence[k * stride : t + 1].unsqueeze(0)).logits[0, -1]
        total += F.cross_entropy(logits.unsqueeze(0), sequence[t + 1].unsqueeze(0)).item()
    return total


@pytest.mark.parametrize("stride", [3, 8])
def test_bpe_model_is_scored_per_token_and_divided_by_the_texts_bytes(stride):
    tokenizer = bpe_tokenizer()
    model = small_model()
    torch.manual_seed(1)
    bpe_model = Transformer(model.config.replace(vocab_size=tokenizer.vocab_size)).double().eval()
    text = "Capitu — olhos de ressaca; a vida é uma ópera, ao vencedor as batatas 🎭."
    as_bpe = score_text(bpe_model, text, stride=stride, tokenizer=tokenizer)
    as_bytes = score_text(model, text, stride=stride)
    assert as_bpe.bytes == as_bytes.bytes == len(text.encode("utf-8"))  # the same bytes for both
    assert as_bpe.tokens == len(tokenizer.encode(text)) < as_bytes.tokens == as_bytes.bytes
    want = reference_token_nats(bpe_model, tokenizer.encode(text), tokenizer.encode("\n\n"), stride)  # after the separator
    assert as_bpe.nats == pytest.approx(want, rel=1e-9)
    assert as_bpe.bits_per_byte == pytest.approx(want / math.log(2) / len(text.encode("utf-8")))


def test_scoring_with_the_wrong_tokenizer_or_without_one_is_refused(tmp_path):
    from moelab.runs.checkpoint import CheckpointError, load_tokenizer

    tokenizer = bpe_tokenizer()
    bpe_model = Transformer(small_model().config.replace(vocab_size=tokenizer.vocab_size))
    with pytest.raises(ValueError, match="vocabulary of 280 tokens, the tokenizer 256"):
        score_text(bpe_model, "olá")
    save_checkpoint(tmp_path / "no-tokenizer.pt", bpe_model)  # saved without the Trainer: no tokenizer
    with pytest.raises(CheckpointError, match="vocabulary of 280 tokens but the checkpoint holds no tokenizer"):
        load_tokenizer(tmp_path / "no-tokenizer.pt")
    assert main(["--checkpoint", str(tmp_path / "no-tokenizer.pt"), str(tmp_path / "no-tokenizer.pt")]) == 2
