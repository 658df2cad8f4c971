"""The one training step (moelab.train.step.TrainStep) against steps written out by hand."""

import copy

import pytest
import torch

from moelab import ModelConfig, Transformer
from moelab.train.step import NonFiniteLoss, TrainStep


def dense_model() -> Transformer:
    # no router, no dropout: the loss of a batch is the mean of its rows' losses
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layers=1, n_heads=2, n_embd=16, context_window=8, n_experts=0, n_common_experts=1,
                                   expert_hidden=32, dropout=0.0))  # fmt: skip


def batch(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, 256, (rows, 9), generator=torch.Generator().manual_seed(seed))
    return data[:, :-1], data[:, 1:]


def hand_step(model, x, y, lr: float, max_norm: float) -> float:
    """Forward, backward, clip and an SGD step, written out."""
    loss = torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, 256), y.reshape(-1))
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = min(1.0, max_norm / (norm.item() + 1e-6))
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * scale * p.grad
    return norm.item()


def test_two_micro_batches_make_the_step_of_their_union():
    model, reference = dense_model(), dense_model()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), grad_clip=0.5)
    (xa, ya), (xb, yb) = batch(4, 1), batch(4, 2)
    result = step(iter([(xa, ya), (xb, yb)]), lr=0.1, accumulate=2)
    norm = hand_step(reference, torch.cat([xa, xb]), torch.cat([ya, yb]), lr=0.1, max_norm=0.5)
    assert result.grad_norm == pytest.approx(norm, rel=1e-5) and norm > 0.5  # clipping acted
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the step leaves no gradient behind
    full = torch.nn.functional.cross_entropy(dense_model()(torch.cat([xa, xb])).logits.reshape(-1, 256), torch.cat([ya, yb]).reshape(-1))
    assert result.parts[0].item() == pytest.approx(full.item(), rel=1e-5)  # the mean over micro-batches


def test_a_nonfinite_loss_changes_no_weight():
    model = dense_model()
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
        before["head.weight"][0, 0] = float("nan")
    step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    with pytest.raises(NonFiniteLoss, match="nan"):
        step([batch(2, 3)], lr=0.1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.nan_to_num(), before[name].nan_to_num()), name
    assert all(p.grad is None for p in model.parameters())


def test_the_balance_bias_moves_after_the_optimizer_step():
    torch.manual_seed(0)
    config = ModelConfig(n_layers=1, n_heads=2, n_embd=16, context_window=8, n_experts=4, top_k=2, n_common_experts=0,
                         expert_hidden=32, balance="bias", bias_update_rate=0.01, dropout=0.0, router_noise=False)  # fmt: skip
    model = Transformer(config)
    router = model.blocks[0].moe.router
    x, y = batch(4, 4)
    with torch.no_grad():
        chosen = model.eval()(x, record_routing=True).routing[0].experts  # no noise, no dropout: as in training
    model.train()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0))
    step([(x, y)], lr=0.0)  # lr 0: the weights stay, so the step routed as the forward above did
    slots = torch.bincount(chosen.reshape(-1), minlength=4).double()
    assert router.balance_bias.tolist() == pytest.approx((0.01 * torch.sign(slots.mean() - slots)).tolist())
    assert router.step_slots.tolist() == [0, 0, 0, 0]
