"""Generation: the decoding loop, the one-token decoder, sampling the next token, prompts and streams."""

from moelab.generate.loop import generate, iter_generate

__all__ = ["generate", "iter_generate"]
