"""The network: positions, attention and its KV cache, the MoE feed-forward, the Transformer, its parameter rules."""
