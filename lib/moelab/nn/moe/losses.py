"""The auxiliary losses of the routers: the load-balancing loss and the router z-loss, over all layers."""

from __future__ import annotations

import torch
from torch import Tensor

from moelab.nn.moe.metrics import expert_load
from moelab.nn.moe.router import RouterOutput


def load_balancing_loss(router_probs: Tensor, expert_indices: Tensor, n_experts: int) -> Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4), top-k form as in Mixtral.

    ``L = N · Σ_i f_i · P_i`` where ``f_i`` is the share of routed token *slots* (tokens ×
    top_k) that go to expert i (so Σ f_i = 1) and ``P_i`` the mean router probability of
    expert i. Only P carries gradient.

    Normalization: with k = top_k, this equals Hugging Face Mixtral's
    ``load_balancing_loss_func`` divided by k (HF divides the slot counts by the number
    of tokens, so its Σ f_i = k), and the model averages it over layers
    (:func:`moe_losses`) where HF pools the tokens of all layers. Uniform routing gives 1;
    full collapse (every token's k slots on the same k experts, all probability on one)
    gives N / k (N for top_k = 1).

    router_probs: (..., N) the router's distribution over experts (:class:`RouterOutput`
    ``probs``: the softmax, or the normalized sigmoid scores as in DeepSeek-V3's
    sequence-wise balance loss); expert_indices: (..., k).
    """
    fraction = expert_load(expert_indices, n_experts).to(router_probs.dtype)
    mean_prob = router_probs.reshape(-1, n_experts).mean(dim=0)
    return n_experts * torch.sum(fraction * mean_prob)


def router_z_loss(router_logits: Tensor) -> Tensor:
    """Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): mean over tokens of logsumexp(logits)^2."""
    logits = router_logits.reshape(-1, router_logits.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(logits, dim=-1).square().mean()


def moe_losses(routers: list[RouterOutput | None], n_experts: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The auxiliary load-balancing loss and the router z-loss, each averaged over MoE layers.

    Both are computed for every gate and balance choice (the load-balancing loss is then
    a comparable balance measure); the model adds the load-balancing loss to its training
    loss only with ``balance="aux_loss"`` (``ModelConfig.aux_loss_weight``). The z-loss
    acts on the raw logits, before softmax or sigmoid.

    ``routers``: one router output per layer (None for a dense layer: both losses 0 there);
    ``like``: a tensor of the activations' device and dtype (for the zeros of a dense model).
    """
    zero = like.new_zeros((), dtype=torch.promote_types(like.dtype, torch.float32))
    aux = [zero if r is None else load_balancing_loss(r.probs, r.experts, n_experts) for r in routers]
    z = [zero if r is None else router_z_loss(r.logits) for r in routers]
    return torch.stack(aux).mean(), torch.stack(z).mean()
