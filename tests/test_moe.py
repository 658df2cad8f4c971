import math

import pytest
import torch

from moelab import ModelConfig, load_balancing_loss, router_z_loss
from moelab.moe import MoE

from .reference import reference_moe, reference_z_loss


def make_moe(**changes) -> MoE:
    config = ModelConfig(n_embd=16, n_heads=2, n_layers=1, expert_hidden=24, n_experts=6, top_k=2).replace(**changes)
    moe = MoE(config).double().eval()
    with torch.no_grad():  # non-zero biases so a missing bias term is caught
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe


@pytest.mark.parametrize(
    "changes",
    [
        {"top_k": 1},
        {"top_k": 2},
        {"top_k": 6},
        {"top_k": 2, "n_common_experts": 2},
        {"top_k": 1, "n_common_experts": 1, "bias": False},
        {"n_experts": 0, "n_common_experts": 3},
        {"top_k": 2, "capacity_factor": 0.5},
        {"top_k": 1, "n_common_experts": 1, "capacity_factor": 1.0},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_dispatch_matches_per_token_reference(changes):
    moe = make_moe(**changes)
    x = torch.randn(40, 16, dtype=torch.float64)
    fast = moe(x.view(4, 10, 16)).y.view(40, 16)
    slow = reference_moe(moe, x)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_capacity_drops_are_recorded():
    moe = make_moe(top_k=2, capacity_factor=0.25)
    x = torch.randn(1, 48, 16, dtype=torch.float64)
    routing = moe(x, record_routing=True).routing
    capacity = moe.capacity(48)
    kept = routing.experts[~routing.dropped]
    assert routing.dropped.any()
    assert torch.bincount(kept, minlength=6).max().item() <= capacity


def test_router_noise_only_in_training():
    moe = make_moe()
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x).y, moe(x).y)
    moe.train()
    assert not torch.allclose(moe(x).y, moe(x).y)


def test_routing_record_shapes_and_weights():
    moe = make_moe(top_k=3)
    routing = moe(torch.randn(2, 5, 16, dtype=torch.float64), record_routing=True).routing
    assert routing.experts.shape == (2, 5, 3) and routing.probs.shape == (2, 5, 6)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    # the chosen experts are the most probable ones, best first
    torch.testing.assert_close(routing.probs.gather(-1, routing.experts), routing.probs.topk(3).values)


def test_aux_loss_is_one_for_uniform_and_n_for_collapsed_routing():
    n, tokens = 8, 64
    uniform_probs = torch.full((tokens, n), 1.0 / n)
    balanced_choice = torch.arange(tokens * 2).view(tokens, 2) % n
    assert load_balancing_loss(uniform_probs, balanced_choice, n).item() == pytest.approx(1.0)

    collapsed_probs = torch.zeros(tokens, n)
    collapsed_probs[:, 0] = 1.0
    collapsed_choice = torch.zeros(tokens, 1, dtype=torch.long)
    assert load_balancing_loss(collapsed_probs, collapsed_choice, n).item() == pytest.approx(n)

    # any routing whose choices follow its probabilities is at least as costly as uniform
    for _ in range(20):
        logits = torch.randn(tokens, n) * 3
        probs = logits.softmax(-1)
        choice = probs.topk(2).indices
        assert load_balancing_loss(probs, choice, n).item() >= 1.0 - 1e-6


def test_aux_loss_formula_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    choice = torch.tensor([[0], [1]])
    # f = (1/2, 1/2, 0); P = (0.4, 0.4, 0.2); 3 * (0.2 + 0.2) = 1.2
    assert load_balancing_loss(probs, choice, 3).item() == pytest.approx(1.2)


def test_aux_loss_gradient_reaches_router_probabilities_only():
    logits = torch.randn(10, 4, requires_grad=True)
    load_balancing_loss(logits.softmax(-1), logits.topk(2).indices, 4).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_z_loss_matches_formula():
    logits = torch.randn(12, 5) * 4
    assert router_z_loss(logits).item() == pytest.approx(reference_z_loss(logits), rel=1e-5)
    assert router_z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2, rel=1e-6)


def test_single_token_path_matches_reference():
    """One token (the decoding case) takes a sort-free path; it must compute the same function."""
    for changes in ({"top_k": 2}, {"top_k": 1, "n_common_experts": 1}, {"top_k": 3, "bias": False}):
        moe = make_moe(**changes)
        x = torch.randn(1, 16, dtype=torch.float64)
        torch.testing.assert_close(moe(x.view(1, 1, 16)).y.view(1, 16), reference_moe(moe, x), rtol=1e-10, atol=1e-10)


def test_expert_mlp_backward_passes_gradcheck():
    """The hand-written backward of the stacked experts, against finite differences (empty experts included)."""
    from moelab.moe import ExpertMLP

    def param(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    x, w1, b1, w2, b2 = param(10, 4), param(3, 4, 5), param(3, 5), param(3, 5, 4), param(3, 4)
    assert torch.autograd.gradcheck(lambda *a: ExpertMLP.apply(*a, (4, 0, 6)), (x, w1, b1, w2, b2))
    assert torch.autograd.gradcheck(lambda x, w1, w2: ExpertMLP.apply(x, w1, None, w2, None, (0, 10, 0)), (x, w1, w2))


def test_bf16_autocast_keeps_experts_in_bf16_and_stays_close_to_fp32():
    moe = make_moe(n_common_experts=1).float()
    x = torch.randn(2, 24, 16)
    exact = moe(x).y
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = moe(x).y
    assert approx.dtype == torch.bfloat16
    assert (approx.float() - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.parametrize("bias", [True, False])
def test_grouped_mm_kernel_matches_the_per_expert_loop(bias, monkeypatch):
    """The grouped_mm kernel (the default on CUDA in bf16) computes what the loop computes, gradients too."""
    import moelab.moe as moe_module

    torch.manual_seed(0)
    experts = moe_module.Experts(4, 8, 16, bias)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(13, 8)
    counts = [5, 0, 6, 2]  # an expert without rows, too
    results = {}
    for grouped in (False, True):
        monkeypatch.setattr(moe_module, "GROUPED_MM", grouped)
        experts.zero_grad()
        xg = x.clone().requires_grad_()
        out = experts(xg, counts)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[grouped] = [out, xg.grad] + [p.grad for p in experts.parameters()]
    for loop, grouped in zip(results[False], results[True]):
        torch.testing.assert_close(grouped, loop, rtol=1e-5, atol=1e-6)
    assert results[True][2][1].abs().sum() == 0  # the empty expert's w1 gradient
