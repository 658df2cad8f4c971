import pytest
import numpy as np
import torch

from moelab import ByteTokenizer

TEXTS = [
    "Não, não; a vida é uma ópera — disse Marcelina, à janela.",
    "Capítulo CXXXV — Otelo\n\nJantei fora e à noite fui ao teatro.",
    "emoji 🎭 e ç, ã, õ, ü, «aspas», “curvas”…",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_lossless(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_multibyte_characters_are_several_tokens():
    tok = ByteTokenizer()
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("—") == [0xE2, 0x80, 0x94]


def test_partial_multibyte_sequence_decodes_without_raising():
    tok = ByteTokenizer()
    cut = tok.encode("ação")[:2]  # 'a' + first byte of 'ç'
    assert tok.decode(cut) == "a\ufffd"
    assert tok.decode([0xFF, 0x80, 65]) == "\ufffd\ufffdA"


def test_stream_decoder_holds_back_half_characters():
    tok = ByteTokenizer()
    stream = tok.stream_decoder()
    pieces = [stream.feed([b]) for b in tok.encode("pé—")]
    assert pieces == ["p", "", "é", "", "", "—"]
    stream.feed([0xE2])
    assert stream.flush() == "\ufffd"


def test_bad_inputs():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="0..255"):
        tok.decode([256])
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    assert tok.encode_tensor("olá").shape == (1, 4)


# ---------------------------------------------------------------------------- byte-level BPE

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moelab.data.tokenizer import MIN_BPE_VOCAB, BPETokenizer  # noqa: E402

CORPUS = [
    "Capitu tinha olhos de ressaca, olhos de cigana oblíqua e dissimulada. Em 1899, 12345 leitores.",
    "Ao vencedor, as batatas! — disse Quincas Borba, no capítulo XLIX; ação, coração, razão.",
    "A vida é uma ópera e uma grande ópera. O tenor e o barítono lutam pelo soprano.",
] * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, 300)


def test_bpe_vocabulary_is_the_256_bytes_and_the_merges(bpe):
    assert bpe.vocab_size == 300
    assert sorted(bpe.pieces[:256]) == [bytes([b]) for b in range(256)]  # every byte has a token
    assert all(len(piece) > 1 for piece in bpe.pieces[256:]) and len(set(bpe.pieces)) == 300
    assert len(bpe.encode(CORPUS[0])) < 0.75 * len(CORPUS[0].encode())  # 44 merges already shorten the text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trip_is_lossless_on_any_text(bpe, text):
    ids = bpe.encode(text)
    assert bpe.to_bytes(ids) == text.encode("utf-8")
    assert bpe.decode(ids) == text == bpe.tokenizer.decode(ids)  # the library's own decoder agrees


def test_bpe_never_merges_across_gpt4_pre_tokens(bpe):
    """Digits go in groups of at most 3, and letters never share a token with digits or punctuation."""
    text = "ano 18991234567, ação!! ressaca.batatas"
    for piece in (bpe.pieces[i] for i in bpe.encode(text)):
        word = piece.decode("utf-8", errors="ignore").strip()
        assert not (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)), piece
        assert sum(c.isdigit() for c in word) <= 3, piece
    assert "18991234567" not in [p.decode(errors="ignore").strip() for p in bpe.pieces]


def test_bpe_stream_decoder_never_shows_half_a_character(bpe):
    text = "coração 🎭 ópera — “curvas”"
    decoder = bpe.stream_decoder()
    shown = "".join(decoder.feed([i]) for i in bpe.encode(text)) + decoder.flush()
    assert shown == text and "\ufffd" not in shown


def test_bpe_saved_and_loaded_encodes_the_same(bpe):
    again = BPETokenizer.from_json(bpe.to_json())
    assert again.pieces == bpe.pieces
    assert again.encode(CORPUS[1]) == bpe.encode(CORPUS[1])
    assert BPETokenizer.train(CORPUS, 300).to_json() == bpe.to_json()  # training is deterministic


@pytest.mark.parametrize("vocab_size", [256, 100, 300.0, True, None])
def test_bpe_vocabulary_under_257_or_not_an_integer_is_refused(vocab_size):
    with pytest.raises(ValueError, match=f">= {MIN_BPE_VOCAB}"):
        BPETokenizer.train(CORPUS, vocab_size)


def test_bpe_refuses_ids_outside_its_vocabulary(bpe):
    with pytest.raises(ValueError, match="0..299"):
        bpe.decode([5, 300])


def test_tokens_shown_for_reading_and_as_arrays(bpe):
    from moelab.data.tokenizer import show_tokens

    assert show_tokens(ByteTokenizer(), "a é\n") == "a│␣│<c3>│<a9>│⏎"
    text = CORPUS[0][:80]
    ids = bpe.encode(text)
    shown = show_tokens(bpe, text).split("│")
    assert len(shown) == len(ids) and "".join(shown).replace("␣", " ").replace("⏎", "\n") == text
    assert bpe.encode_array(text).tolist() == ids and bpe.encode_array(text).dtype == np.uint16
    assert ByteTokenizer().encode_array("ação").tolist() == list("ação".encode())
    assert bpe.to_bytes(np.array(ids, dtype=np.uint16)) == text.encode() == ByteTokenizer().to_bytes(np.frombuffer(text.encode(), np.uint8))
