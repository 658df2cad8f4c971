"""Counting FLOPs: per training token, a GPU's rated bf16 peak, and the MFU they give."""

from __future__ import annotations

from moelab.config.model import ModelConfig

# Rated dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
# Matched against torch.cuda.get_device_name in order: the first entry whose words all occur wins.
RATED_BF16_PEAKS: list[tuple[tuple[str, ...], str, float]] = [
    (("h200",), "H200", 989.0),
    (("h100", "pcie"), "H100 PCIe", 756.0),
    (("h100", "nvl"), "H100 NVL", 835.0),
    (("h100",), "H100 SXM", 989.0),
    (("a100",), "A100", 312.0),
    (("l4",), "L4", 121.0),
    (("rtx", "4090"), "RTX 4090", 165.0),
]


def rated_bf16_peak(name: str) -> tuple[str, float] | None:
    """``(card, FLOP/s)`` of a GPU's rated dense bf16 peak from its name, or None for a card not in the table."""
    words = name.lower().replace("-", " ").split()
    text = " ".join(words)
    for keys, card, tflops in RATED_BF16_PEAKS:
        if all((key in words) if key == "l4" else (key in text) for key in keys):
            return card, tflops * 1e12
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved training FLOP/s (tokens/s × FLOPs per token) over a peak."""
    return tokens_per_s * flops_per_token / peak_flops


def matmul_params_per_token(config: ModelConfig, training: bool = True) -> int:
    """Weights each token multiplies through: attention, router, common + top_k experts, head.

    From :meth:`ModelConfig.param_counts` ("matmul", training); the router-noise weights
    are used in training only.
    """
    noise = config.routed_experts * config.n_embd if config.is_moe and config.router_noise else 0
    return config.param_counts()["matmul"] - (0 if training else config.n_layers * noise)


def train_flops_per_token(config: ModelConfig, window: int) -> int:
    """6·N + 12·L·d·T (Chowdhery et al. 2022, PaLM, app. B): N = matmul weights per token,

    the attention term counts every key position (as MFU conventionally does).
    """
    return 6 * matmul_params_per_token(config) + 12 * config.n_layers * config.n_embd * window
