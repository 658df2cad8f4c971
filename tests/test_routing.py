"""The routing choices (issue 16): gate, balance (aux loss, selection bias, none), fine-grained experts,
and the balance measures, each against a slow reference or hand-computed values."""

import math

import pytest
import torch

from moelab import Transformer, load_balancing_loss
from moelab.nn.moe.layer import MoE
from moelab.nn.moe.metrics import expert_load, load_imbalance

from .test_moe import make_moe, reference_moe, small_config


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("balance", ["aux_loss", "bias", "none"])
@pytest.mark.parametrize(
    "changes",
    [{"top_k": 1}, {"top_k": 2, "n_common_experts": 1}, {"top_k": 1, "expert_granularity": 3, "capacity_factor": 1.0}],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_each_gate_and_balance_matches_the_per_token_reference(gate, balance, changes):
    """Output, chosen experts and every gradient (input, router, experts) against the per-token reference."""
    config = small_config(gate=gate, balance=balance, router_noise=False, **changes)
    moe = make_moe(gate=gate, balance=balance, router_noise=False, **changes)
    x = torch.randn(3, 8, 16, dtype=torch.float64, requires_grad=True)
    y, router = moe(x)
    want, chosen = reference_moe(moe, x, config)
    assert torch.equal(router.experts, chosen)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    direction = torch.randn_like(y)
    got_grads = torch.autograd.grad((y * direction).sum(), [x, *moe.parameters()])
    want_grads = torch.autograd.grad((want * direction).sum(), [x, *moe.parameters()], allow_unused=True)
    for got, expected in zip(got_grads, want_grads):
        torch.testing.assert_close(got, torch.zeros_like(got) if expected is None else expected, rtol=1e-9, atol=1e-10)
    names = [name for name, _ in moe.named_parameters()]
    assert got_grads[1 + names.index("router.gate.weight")].abs().sum() > 0  # the router learns through its gates


def test_the_bias_moves_each_expert_by_gamma_against_its_step_load():
    """Slots are counted over the step's training forwards (two micro-batches here), none in eval mode;
    the update is b_i += γ · sign(mean − load_i), then the count restarts."""
    moe = make_moe(balance="bias", bias_update_rate=0.01, router_noise=False)
    moe(torch.randn(2, 8, 16, dtype=torch.float64))  # eval mode: not counted
    assert moe.router.step_slots.tolist() == [0] * 6
    moe.train()
    chosen = [moe(torch.randn(2, 8, 16, dtype=torch.float64))[1].experts for _ in range(2)]
    counts = [sum(int((c == e).sum()) for c in chosen) for e in range(6)]
    assert moe.router.step_slots.tolist() == counts and sum(counts) == 2 * 2 * 8 * 2
    before = moe.router.balance_bias.clone()
    moe.router.update_balance_bias(moe.router.step_slots)
    mean = sum(counts) / 6  # 64 / 6: no expert exactly at the mean
    step = torch.tensor([0.01 if c < mean else -0.01 for c in counts], dtype=torch.float64)
    assert torch.equal(moe.router.balance_bias, before + step)
    assert moe.router.step_slots.tolist() == [0] * 6
    # by hand: loads (1, 3, 2, 2, 3, 1), mean 2: up, down, unchanged twice, down, up
    before = moe.router.balance_bias.clone()
    moe.router.update_balance_bias(torch.tensor([1, 3, 2, 2, 3, 1]))
    assert torch.equal(moe.router.balance_bias, before + torch.tensor([1.0, -1, 0, 0, -1, 1], dtype=torch.float64) * 0.01)
    before = moe.router.balance_bias.clone()
    moe.router.update_balance_bias(torch.full((6,), 7))  # equal loads: no change
    assert torch.equal(moe.router.balance_bias, before)


def test_the_bias_is_state_without_gradient():
    moe = make_moe(balance="bias")
    assert "router.balance_bias" in moe.state_dict() and "router.step_slots" not in moe.state_dict()
    assert all(p is not moe.router.balance_bias for p in moe.parameters()) and not moe.router.balance_bias.requires_grad
    moe.train()
    y, router = moe(torch.randn(2, 8, 16, dtype=torch.float64))
    (y.square().sum() + load_balancing_loss(router.probs, router.experts, 6)).backward()
    assert moe.router.balance_bias.grad is None and moe.router.gate.weight.grad.abs().sum() > 0
    assert make_moe().router.balance_bias is None and "router.balance_bias" not in make_moe().state_dict()


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_the_bias_changes_the_choice_not_the_gates(gate):
    moe = make_moe(balance="bias", gate=gate, top_k=2)
    x = torch.randn(4, 8, 16, dtype=torch.float64)
    with torch.no_grad():
        moe.router.balance_bias.zero_()
        plain = moe(x)[1]
        moe.router.balance_bias[3] = 10.0  # expert 3 is now chosen by every token, first
        biased = moe(x)[1]
    assert (biased.experts[..., 0] == 3).all() and not (plain.experts[..., 0] == 3).all()
    logits = x @ moe.router.gate.weight.T
    scores = logits.softmax(-1) if gate == "softmax" else logits.sigmoid()
    raw = scores.gather(-1, biased.experts)
    torch.testing.assert_close(biased.weights, raw / raw.sum(-1, keepdim=True), rtol=1e-12, atol=1e-12)
    assert torch.equal(biased.probs, plain.probs)  # the router's distribution does not see the bias


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_the_bias_balances_a_router_that_prefers_one_expert(gate):
    """A frozen router sends ~60% of the tokens to expert 0 of 4; the bias updates alone spread the load.

    (A router whose softmax is saturated, expert 0 near probability 1 for every token, is not
    balanced this way: the other experts' scores are all ~0, so the bias alone picks among
    them and the load rotates between them; sigmoid scores do not saturate together.)
    """
    torch.manual_seed(0)
    config = small_config(n_experts=4, top_k=1, router_noise=False, balance="bias", bias_update_rate=0.01, gate=gate)
    moe = MoE(config).train()
    direction = torch.nn.functional.normalize(torch.randn(16), dim=0)
    with torch.no_grad():
        moe.router.gate.weight.normal_(0, 0.5)
        moe.router.gate.weight[0] = 2 * direction

    def batch(n):
        return torch.randn(1, n, 16) + direction

    def maxvio():
        with torch.no_grad():
            moe.router.step_slots.zero_()
            return load_imbalance(expert_load(moe(batch(4096))[1].experts, 4))[1].item()

    before = maxvio()
    for _ in range(300):
        with torch.no_grad():
            moe(batch(256))
        moe.router.update_balance_bias(moe.router.step_slots)
    after = maxvio()
    assert before > 1.3  # expert 0 takes over half of the tokens (MaxVio 3 = all of them)
    assert after < 0.25, (before, after, moe.router.balance_bias)


def test_the_model_updates_every_layer_from_the_reduced_loads():
    """Under DDP the counts of all ranks are summed first (a fake reduce here adds another rank's counts),
    so the sign follows the global load, not this rank's."""
    model = Transformer(small_config(n_layers=2, n_experts=4, balance="bias", bias_update_rate=0.5))
    local = torch.tensor([[5, 1, 1, 1], [0, 4, 2, 2]])
    other_rank = torch.tensor([[0, 6, 0, 2], [4, 0, 2, 2]])
    for moe, slots in zip((b.moe for b in model.blocks), local):
        moe.router.step_slots.copy_(slots)
    seen = []

    def fake_all_reduce(slots):
        seen.append(slots.clone())
        return (slots + other_rank).double()  # what distributed.all_reduce returns: float64 sums

    model.update_balance_biases(reduce=fake_all_reduce)
    assert len(seen) == 1 and torch.equal(seen[0], local)  # one reduce for all layers
    # global loads (5, 7, 1, 3) and (4, 4, 4, 4): means 4 and 4
    assert model.blocks[0].moe.router.balance_bias.tolist() == [-0.5, -0.5, 0.5, 0.5]
    assert model.blocks[1].moe.router.balance_bias.tolist() == [0.0, 0.0, 0.0, 0.0]  # locally unequal, globally equal
    assert all(b.moe.router.step_slots.tolist() == [0] * 4 for b in model.blocks)
    Transformer(small_config()).update_balance_biases(reduce=fake_all_reduce)  # other balance choices: nothing
    assert len(seen) == 1


@pytest.mark.parametrize("balance, weight", [("aux_loss", 0.3), ("bias", 0.0), ("none", 0.0)])
def test_only_the_aux_loss_choice_trains_on_the_aux_loss(balance, weight):
    model = Transformer(small_config(n_layers=2, balance=balance, aux_loss_coef=0.3)).double().train()
    idx = torch.randint(0, 256, (2, 12))
    out = model(idx, idx)
    assert out.aux_loss.item() >= 1.0 - 1e-9  # still reported: a balance measure
    torch.testing.assert_close(out.loss, out.ce_loss + weight * out.aux_loss + model.config.z_loss_coef * out.z_loss)


def test_sigmoid_probs_are_the_normalized_scores():
    moe = make_moe(gate="sigmoid", top_k=3)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    router = moe(x)[1]
    scores = (x @ moe.router.gate.weight.T).sigmoid()
    torch.testing.assert_close(router.probs, scores / scores.sum(-1, keepdim=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(router.weights, scores.topk(3).values / scores.topk(3).values.sum(-1, keepdim=True))
    one = make_moe(gate="sigmoid", top_k=1)
    scores = (x @ one.router.gate.weight.T).sigmoid()
    torch.testing.assert_close(one(x)[1].weights, scores.max(-1, keepdim=True).values)  # k = 1: the raw score


def test_load_imbalance_by_hand():
    cv, maxvio = load_imbalance(torch.tensor([[1.0, 0, 0, 0], [2, 1, 1, 0], [3, 3, 3, 3]]))
    # (1,0,0,0): mean 1/4, std sqrt(3)/4 -> CV sqrt(3), MaxVio (1 - 1/4) / (1/4) = 3
    # (2,1,1,0): mean 1, std sqrt((1 + 0 + 0 + 1) / 4) -> CV sqrt(1/2), MaxVio 1; balanced: 0 and 0
    torch.testing.assert_close(cv, torch.tensor([math.sqrt(3), math.sqrt(0.5), 0.0], dtype=torch.float64))
    torch.testing.assert_close(maxvio, torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    shares = load_imbalance(torch.tensor([0.5, 0.25, 0.25, 0.0]))  # counts or shares: the same measure
    torch.testing.assert_close(torch.stack(shares), torch.tensor([math.sqrt(0.5), 1.0], dtype=torch.float64))
