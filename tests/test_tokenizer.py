import pytest
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
