"""The run report's headline says what the model reads: bytes, or the tokens of a BPE vocabulary."""

from moelab.views.report import _headline

MODEL = {"n_layers": 4, "n_embd": 128, "n_experts": 8, "top_k": 2, "n_common_experts": 1, "context_window": 64}
PARAMS = {"total": 2_912_000, "active": 1_329_920}


def test_a_byte_model_reads_bytes_and_a_bpe_model_tokens():
    as_bytes = _headline({"model": {**MODEL, "vocab_size": 256}, "params": PARAMS,
                          "val_split": {"bytes": 400_659, "tokens": 400_659, "stride": 32, "bits_per_byte": 1.94}})  # fmt: skip
    assert "context 64 bytes;" in as_bytes[0]
    assert "(400,659 bytes, every byte scored once, stride 32): 1.9400 bits per byte." in as_bytes[1]
    bpe = _headline({"model": {**MODEL, "vocab_size": 2048}, "params": PARAMS,
                     "val_split": {"bytes": 400_659, "tokens": 133_534, "stride": 32, "bits_per_byte": 1.8153}})  # fmt: skip
    assert "context 64 tokens, vocabulary 2,048;" in bpe[0] and "bytes" not in bpe[0]
    assert "(400,659 bytes in 133,534 tokens, every token scored once, stride 32): 1.8153 bits per byte." in bpe[1]
