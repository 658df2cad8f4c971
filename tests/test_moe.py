import math

import pytest
import torch

from moelab import ModelConfig, load_balancing_loss, router_z_loss
from moelab.nn.moe.experts import ExpertMLP, Experts, mlp
from moelab.nn.moe.layer import MoE, capacity_keep
from moelab.nn.moe.losses import moe_losses


def small_config(**changes) -> ModelConfig:
    return ModelConfig(n_embd=16, n_heads=2, n_layers=1, expert_hidden=24, n_experts=6, top_k=2).replace(**changes)


def make_moe(**changes) -> MoE:
    moe = MoE(small_config(**changes)).double().eval()
    with torch.no_grad():  # non-zero biases so a missing bias term is caught
        for p in moe.parameters():
            p.normal_(0, 0.3)
        if moe.router is not None and moe.router.balance_bias is not None:  # a selection bias large enough to change choices
            moe.router.balance_bias.normal_(0, 0.3)
    return moe


def reference_moe(moe: MoE, x: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The MoE layer one token at a time, one expert at a time (eval mode, no router noise).

    Returns the output (B, T, d) and the chosen experts (B, T, k), None for a dense layer.
    The expert counts come from the config: expert_granularity m gives N = n_experts · m
    routed experts of width expert_hidden / m, k = top_k · m chosen per token. Scores:
    softmax over N or sigmoid of each logit; with balance="bias" the layer's bias is added
    to the scores to choose, never to the gates (the chosen raw scores, renormalized when
    k > 1). Common experts are read back as n separate experts from their fused weights.
    Capacity, per sequence: the slot of position t is dropped when its expert was already
    chosen ceil(capacity_factor * (t+1) * k / N) times at earlier positions of the same
    sequence (dropped choices count too).
    """
    n, k = config.n_experts * config.expert_granularity, config.top_k * config.expert_granularity
    width = config.expert_hidden  # of one common expert
    out, chosen = torch.zeros_like(x), torch.zeros(*x.shape[:2], k, dtype=torch.long)
    for b in range(x.shape[0]):
        chosen_before = [0] * max(n, 1)
        for t in range(x.shape[1]):
            xt, y = x[b, t], torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
            if moe.common is not None:
                w1, b1 = moe.common.fc.weight, moe.common.fc.bias
                w2, b2 = moe.common.proj.weight, moe.common.proj.bias
                for start in range(0, w1.shape[0], width):
                    part = slice(start, start + width)
                    h = w1[part] @ xt + (b1[part] if b1 is not None else 0)
                    y = y + w2[:, part] @ torch.nn.functional.gelu(h)
                if b2 is not None:
                    y = y + b2
            if n:
                logits = moe.router.gate.weight @ xt
                scores = torch.softmax(logits, dim=0) if config.gate == "softmax" else torch.sigmoid(logits)
                bias = moe.router.balance_bias.tolist() if config.balance == "bias" else [0.0] * n
                selection = [scores[e].item() + bias[e] for e in range(n)]
                ranked = sorted(range(n), key=lambda e: -selection[e])[:k]
                gates = [scores[e] for e in ranked]
                if k > 1:
                    gates = [g / sum(gates) for g in gates]
                capacity = None
                if config.capacity_factor is not None:
                    capacity = math.ceil(config.capacity_factor * (t + 1) * k / n)
                ex = moe.experts
                assert ex.w1.shape == (n, x.shape[-1], config.expert_hidden // config.expert_granularity)
                for e, g in zip(ranked, gates):
                    if capacity is None or chosen_before[e] < capacity:
                        h = xt @ ex.w1[e] + (ex.b1[e] if ex.b1 is not None else 0)
                        y = y + g * (torch.nn.functional.gelu(h) @ ex.w2[e] + (ex.b2[e] if ex.b2 is not None else 0))
                for e in ranked:
                    chosen_before[e] += 1
                chosen[b, t] = torch.tensor(ranked)
            out[b, t] = y
    return out, (chosen if n else None)


def reference_z_loss(logits: torch.Tensor) -> float:
    """(1/B) sum_i (log sum_j exp(x_ij))^2, in plain Python floats."""
    total = 0.0
    for row in logits.tolist():
        total += math.log(sum(math.exp(v) for v in row)) ** 2
    return total / len(logits)


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
        {"top_k": 2, "expert_granularity": 4, "n_common_experts": 1},
        {"top_k": 1, "expert_granularity": 2, "capacity_factor": 0.5, "gate": "sigmoid", "balance": "bias"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.on_device
def test_dispatch_matches_per_token_reference(changes, device):
    moe = make_moe(**changes).to(device)
    x = torch.randn(4, 10, 16, dtype=torch.float64).to(device)
    torch.testing.assert_close(moe(x)[0], reference_moe(moe, x, small_config(**changes))[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("changes", [{"top_k": 2}, {"top_k": 1, "n_common_experts": 1}, {"expert_granularity": 4}],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_grouped_kernel_layer_matches_per_token_reference(changes):
    """The whole layer on the grouped kernel (counts and layout on the device, fixed-size buffers), in fp32."""
    moe = make_moe(**changes).float()
    moe.experts.kernel = "grouped"
    x = torch.randn(3, 11, 16)
    want = reference_moe(moe.double(), x.double(), small_config(**changes))[0]
    torch.testing.assert_close(moe.float()(x)[0], want.float(), rtol=1e-4, atol=1e-5)


def test_capacity_drops_later_tokens_and_respects_the_growing_capacity():
    moe = make_moe(top_k=2, capacity_factor=0.5)
    x = torch.randn(3, 48, 16, dtype=torch.float64)
    router = moe(x)[1]
    assert router.dropped.any()
    kept = torch.nn.functional.one_hot(router.experts, 6).mul(~router.dropped.unsqueeze(-1)).sum(2)  # (B, T, N)
    capacity = torch.tensor([math.ceil(0.5 * (t + 1) * 2 / 6) for t in range(48)])
    assert (kept.cumsum(1) <= capacity.view(1, 48, 1)).all()  # no expert holds more than C(t) up to t
    # a sequence's drops depend on its own tokens only, and on none after them
    alone = moe(x[1:2, :20])[1]
    torch.testing.assert_close(alone.dropped, router.dropped[1:2, :20])


def test_capacity_with_counts_carried_equals_one_pass():
    experts = torch.randint(0, 4, (2, 12, 2))
    experts[..., 1] = (experts[..., 0] + 1) % 4  # distinct choices per token, as top-k gives
    whole = capacity_keep(experts, 0.6, 4)
    counts = torch.zeros(2, 4, dtype=torch.long)
    parts = [capacity_keep(experts[:, a:b], 0.6, 4, a, counts) for a, b in ((0, 5), (5, 6), (6, 12))]
    assert torch.equal(torch.cat(parts, 1), whole)
    assert torch.equal(counts, torch.nn.functional.one_hot(experts, 4).sum((1, 2)))


def test_router_noise_only_in_training():
    moe = make_moe()
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x)[0], moe(x)[0])
    moe.train()
    assert not torch.allclose(moe(x)[0], moe(x)[0])


def test_router_output_shapes_and_weights():
    moe = make_moe(top_k=3)
    router = moe(torch.randn(2, 5, 16, dtype=torch.float64))[1]
    assert router.experts.shape == (2, 5, 3) and router.probs.shape == (2, 5, 6) and router.logits.shape == (2, 5, 6)
    assert router.dropped is None  # dropless
    torch.testing.assert_close(router.weights.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    # the chosen experts are the most probable ones, best first
    torch.testing.assert_close(router.probs.gather(-1, router.experts), router.probs.topk(3).values)
    record = router.record()
    assert not record.weights.requires_grad and record.dropped.shape == (2, 5, 3) and not record.dropped.any()


def test_top1_gate_is_the_raw_probability():
    router = make_moe(top_k=1)(torch.randn(1, 4, 16, dtype=torch.float64))[1]
    torch.testing.assert_close(router.weights, router.probs.max(-1, keepdim=True).values)


def hf_mixtral_load_balancing_loss(router_logits: list[torch.Tensor], num_experts: int, top_k: int) -> float:
    """Hugging Face Mixtral's ``load_balancing_loss_func`` (no attention mask), written out:
    the gate logits of all layers are concatenated (pooled), then
    ``num_experts * sum_e mean_tokens(one_hot(top_k experts))[e] * mean_tokens(softmax)[e]``,
    where the first mean sums to top_k over experts."""
    logits = torch.cat(router_logits, dim=0)
    probs = torch.softmax(logits, dim=-1)
    _, selected = torch.topk(probs, top_k, dim=-1)
    expert_mask = torch.nn.functional.one_hot(selected, num_experts)  # (tokens, k, N)
    tokens_per_expert = expert_mask.float().mean(dim=0)  # (k, N)
    router_prob_per_expert = probs.mean(dim=0)  # (N,)
    return (num_experts * torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))).item()


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_aux_loss_is_hf_mixtral_divided_by_top_k(top_k):
    n = 8
    logits = torch.randn(50, n, dtype=torch.float64) * 2
    probs = logits.softmax(-1)
    ours = load_balancing_loss(probs, probs.topk(top_k).indices, n).item()
    assert ours == pytest.approx(hf_mixtral_load_balancing_loss([logits], n, top_k) / top_k, rel=1e-6)  # f in float32


def test_aux_loss_averages_layers_where_hf_pools_them():
    n, k = 6, 2
    layers = [torch.randn(30, n, dtype=torch.float64) * s for s in (1.0, 4.0)]
    routers = []
    for logits in layers:
        probs = logits.softmax(-1)
        weights, experts = probs.topk(k)
        routers.append(_router(logits, probs, experts, weights))
    aux, _ = moe_losses(routers, n, like=layers[0])
    per_layer = [hf_mixtral_load_balancing_loss([logits], n, k) / k for logits in layers]
    assert aux.item() == pytest.approx(sum(per_layer) / 2, rel=1e-6)
    # pooling over layers is a different number in general (same number of tokens: the mean of f·P products differs)
    assert hf_mixtral_load_balancing_loss(layers, n, k) / k != pytest.approx(aux.item(), rel=1e-6)


def _router(logits, probs, experts, weights):
    from moelab.nn.moe.router import RouterOutput

    return RouterOutput(logits, probs, experts, weights, None)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_aux_loss_is_one_for_uniform_and_n_over_k_for_collapsed_routing(top_k):
    n, tokens = 8, 64
    uniform_probs = torch.full((tokens, n), 1.0 / n)
    balanced_choice = torch.arange(tokens * top_k).view(tokens, top_k) % n
    assert load_balancing_loss(uniform_probs, balanced_choice, n).item() == pytest.approx(1.0)

    # collapse: every token sends its k slots to experts 0..k-1, all probability on expert 0
    collapsed_probs = torch.zeros(tokens, n)
    collapsed_probs[:, 0] = 1.0
    collapsed_choice = torch.arange(top_k).expand(tokens, top_k)
    assert load_balancing_loss(collapsed_probs, collapsed_choice, n).item() == pytest.approx(n / top_k)

    # any routing whose choices follow its probabilities is at least as costly as uniform
    for _ in range(20):
        probs = (torch.randn(tokens, n) * 3).softmax(-1)
        assert load_balancing_loss(probs, probs.topk(top_k).indices, n).item() >= 1.0 - 1e-6


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


def test_moe_losses_are_zero_for_dense_layers():
    aux, z = moe_losses([None, None], 0, like=torch.zeros(2, dtype=torch.bfloat16))
    assert aux.item() == 0 and z.item() == 0 and aux.dtype == torch.float32


@pytest.mark.parametrize(
    "changes",
    [
        {"top_k": 2},
        {"top_k": 1, "n_common_experts": 1},
        {"top_k": 3, "bias": False},
        {"capacity_factor": 0.3},
        {"gate": "sigmoid", "balance": "bias", "expert_granularity": 2},
    ],
    ids=str,
)
def test_single_token_path_matches_reference(changes):
    """One token (the decoding case) takes a sort-free path; it must compute the same function."""
    moe = make_moe(**changes)
    x = torch.randn(1, 1, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x)[0], reference_moe(moe, x, small_config(**changes))[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["gelu", "relu2"])
def test_expert_mlp_backward_passes_gradcheck(activation):
    """The hand-written backward of the stacked experts, against finite differences (empty experts included)."""

    def param(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    x, w1, b1, w2, b2 = param(10, 4), param(3, 4, 5), param(3, 5), param(3, 5, 4), param(3, 4)
    assert torch.autograd.gradcheck(lambda *a: ExpertMLP.apply(*a, (4, 0, 6), False, activation), (x, w1, b1, w2, b2))
    assert torch.autograd.gradcheck(
        lambda x, w1, w2: ExpertMLP.apply(x, w1, None, w2, None, (0, 10, 0), False, activation), (x, w1, w2)
    )


def test_bf16_autocast_keeps_experts_in_bf16_and_stays_close_to_fp32():
    moe = make_moe(n_common_experts=1).float()
    x = torch.randn(2, 24, 16)
    exact = moe(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = moe(x)[0]
    assert approx.dtype == torch.bfloat16
    assert (approx.float() - exact).abs().max() < 0.05 * exact.abs().max()


def _run_kernel(kernel, bias, x, counts, dtype=torch.float32, device="cpu", hidden=16, row_bucket=None):
    torch.manual_seed(0)
    experts = Experts(4, x.shape[1], hidden, bias, kernel=kernel).to(device)
    experts.row_bucket = row_bucket
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.3)
    xg = x.to(device, dtype).clone().requires_grad_()
    out = experts(xg, torch.tensor(counts, device=device))
    (out.float() * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
    return [out, xg.grad] + [p.grad for p in experts.parameters()]


@pytest.mark.on_device
@pytest.mark.parametrize("kernel", ["loop", "grouped", "auto"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("widths", [(8, 16), (10, 20)], ids=["aligned", "unaligned"])
def test_each_kernel_matches_the_plain_path(kernel, bias, widths, device):
    """Outputs and gradients (input and every weight) of each kernel against plain autograd per expert,
    also for widths d, h that are not multiples of 8 (the grouped kernel pads them, as for n_embd 1028)."""
    if device.type == "cuda" and kernel == "grouped":
        pytest.skip("fp32 grouped_mm is never used on CUDA (auto picks it in bf16: test_auto_kernel_on_cuda_bf16...)")
    x = torch.randn(13, widths[0])
    counts = [5, 0, 6, 2]  # an expert without rows, too; no block a multiple of 8 rows
    plain = _run_kernel("plain", bias, x, counts, device=device, hidden=widths[1])
    fast = _run_kernel(kernel, bias, x, counts, device=device, hidden=widths[1])
    for got, want in zip(fast, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert fast[2].abs().sum() > 0 and fast[2][1].abs().sum() == 0  # the empty expert's w1 gradient


@pytest.mark.on_device
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bucket", [8, 64])
def test_expert_rows_padded_to_buckets_change_nothing(bias, bucket, device):
    """The loop kernel with each expert's rows padded by zero rows to a multiple of ``bucket`` equals
    the plain path to 1e-6 in fp32 (outputs, input and weight gradients), the padded rows
    dropped, an empty expert untouched; in bf16 (where it pads by default) it stays as close to
    the plain bf16 path as the unpadded loop does."""
    x = torch.randn(150, 8)
    counts = [70, 0, 1, 79]  # blocks just under, at and over a bucket, and an empty expert
    plain = _run_kernel("plain", bias, x, counts, device=device)
    padded = _run_kernel("loop", bias, x, counts, device=device, row_bucket=bucket)
    assert padded[0].shape == (150, 8)
    for got, want in zip(padded, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert padded[2][1].abs().sum() == 0  # the empty expert's w1 gradient
    plain16 = _run_kernel("plain", bias, x, counts, torch.bfloat16, device)
    for name, bucket16 in (("padded", None), ("unpadded", 1)):
        fast = _run_kernel("loop", bias, x, counts, torch.bfloat16, device, row_bucket=bucket16)
        for got, want in zip(fast, plain16):
            torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2, msg=name)


def test_the_loop_kernel_pads_bf16_blocks_and_leaves_fp32_blocks_as_they_come(monkeypatch):
    from moelab.nn.moe import experts as experts_module

    seen = []
    real = experts_module.ExpertMLP.apply
    monkeypatch.setattr(experts_module.ExpertMLP, "apply", lambda *a: seen.append(a[5]) or real(*a))
    experts = Experts(4, 8, 16, True, kernel="loop")
    for dtype in (torch.float32, torch.bfloat16):
        experts(torch.randn(150, 8, dtype=dtype), torch.tensor([70, 0, 1, 79]))
    assert seen == [(70, 0, 1, 79), (128, 0, 64, 128)]


@pytest.mark.on_device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="grouped_mm in bf16 needs CUDA")
@pytest.mark.parametrize("widths", [(8, 16), (12, 20)], ids=["aligned", "unaligned"])
def test_auto_kernel_on_cuda_bf16_matches_the_plain_path(widths):
    x = torch.randn(40, widths[0])
    counts = [17, 0, 9, 14]
    plain = _run_kernel("plain", True, x, counts, torch.bfloat16, "cuda", widths[1])
    for name in ("auto", "grouped", "loop"):
        fast = _run_kernel(name, True, x, counts, torch.bfloat16, "cuda", widths[1])
        for got, want in zip(fast, plain):
            torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)


def test_grouped_layout_aligns_every_expert_block():
    from moelab.nn.moe.grouped import aligned_layout as _aligned_layout, padded_rows

    counts = [3, 0, 9, 8]  # 20 rows: blocks of 8, 0, 16, 8 rows, then the spare rows
    assert padded_rows(20, 4) == 48  # 20 + 4 experts × 7, rounded up to 8: fixed by the shapes alone
    position, offsets, padded_expert = _aligned_layout(torch.tensor(counts), 20)
    assert offsets.tolist() == [8, 8, 24, 48]  # the last block takes the spare rows
    assert position.tolist() == [0, 1, 2, *range(8, 17), *range(24, 32)]
    assert padded_expert.tolist() == [0] * 8 + [2] * 16 + [3] * 24
    generator = torch.Generator().manual_seed(0)
    for n in (1, 3, 8, 64):  # random counts, with empty experts (trailing ones too) and blocks of 8k + 1 rows
        for _ in range(20):
            counts = torch.randint(0, 20, (n,), generator=generator) * torch.randint(0, 2, (n,), generator=generator)
            if torch.rand((), generator=generator) < 0.3:
                counts = 8 * torch.randint(0, 3, (n,), generator=generator) + 1  # the most padding per block
            n_rows = int(counts.sum())
            position, offsets, padded_expert = _aligned_layout(counts, n_rows)
            row_expert = torch.repeat_interleave(torch.arange(n), counts)
            assert len(padded_expert) == padded_rows(n_rows, n) and offsets[-1] == len(padded_expert)
            assert (offsets % 8 == 0).all() and (offsets.diff() >= 0).all()
            assert len(set(position.tolist())) == n_rows and (position < len(padded_expert)).all()
            assert torch.equal(padded_expert[position], row_expert)  # every row lands in its expert's block


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        Experts(2, 4, 4, True, kernel="fast")


def test_mlp_is_linear_activation_linear():
    x, w1, b1, w2, b2 = torch.randn(3, 4), torch.randn(4, 5), torch.randn(5), torch.randn(5, 4), torch.randn(4)
    want = torch.nn.functional.gelu(x @ w1 + b1) @ w2 + b2
    torch.testing.assert_close(mlp(x, w1, b1, w2, b2, "gelu"), want)
    want = torch.relu(x @ w1 + b1) ** 2 @ w2 + b2
    torch.testing.assert_close(mlp(x, w1, b1, w2, b2, "relu2"), want)



def _layer_run(moe, kernel, x, dtype, device):
    """Output and gradients (input, every parameter) of the layer with its experts on ``kernel``."""
    moe.experts.kernel = kernel
    xg = x.to(device).clone().requires_grad_()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = moe(xg)[0]
    (out.float() * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
    grads = [xg.grad] + [p.grad.clone() for p in moe.parameters() if p.grad is not None]
    moe.zero_grad(set_to_none=True)
    return [out] + grads


LAYOUTS = [
    {"top_k": 2},
    {"top_k": 1, "bias": False, "activation": "relu2"},
    {"top_k": 3, "n_embd": 10, "expert_hidden": 20, "n_common_experts": 1},  # widths padded to 16 and 24
    {"top_k": 2, "gate": "sigmoid", "balance": "bias", "expert_granularity": 2},
]


@pytest.mark.on_device
@pytest.mark.parametrize("changes", LAYOUTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_dispatch_straight_into_the_grouped_layout_equals_the_sorted_path(changes, device, monkeypatch):
    """The layer's grouped dispatch (tokens gathered into the aligned layout, gate-weighted outputs
    scatter-added back) against the sorted path with autograd per expert: output, input gradient
    and every parameter's gradient, the router's included (through the gates); on CUDA in bf16."""
    import moelab.nn.moe.experts as experts_module

    if device.type == "cpu" and not hasattr(torch.nn.functional, "grouped_mm"):
        pytest.skip("this torch has no grouped_mm")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    moe = make_moe(n_experts=6, **changes).float().train().to(device)
    moe.router.noise = None  # the same routing in both runs
    x = torch.randn(3, 13, moe.router.gate.in_features)
    calls = []
    real = experts_module.dispatch_grouped
    monkeypatch.setattr(experts_module, "dispatch_grouped", lambda *a: calls.append(1) or real(*a))
    direct = _layer_run(moe, "grouped", x, dtype, device)
    assert calls == [1]  # the grouped kernel took the direct dispatch
    sorted_path = _layer_run(moe, "plain", x, dtype, device)
    tol = {"rtol": 3e-2, "atol": 3e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    assert len(direct) == len(sorted_path)
    for got, want in zip(direct, sorted_path):
        torch.testing.assert_close(got.float(), want.float(), **tol)


def test_capacity_keeps_the_sorted_path_on_the_grouped_kernel(monkeypatch):
    import moelab.nn.moe.experts as experts_module

    monkeypatch.setattr(experts_module, "dispatch_grouped", lambda *a: pytest.fail("dropped slots need the sorted path"))
    moe = make_moe(top_k=2, capacity_factor=0.5).float()
    moe.experts.kernel = "grouped"
    x = torch.randn(2, 12, 16)
    want = reference_moe(moe.double(), x.double(), small_config(top_k=2, capacity_factor=0.5))[0]
    torch.testing.assert_close(moe.float()(x)[0], want.float(), rtol=1e-4, atol=1e-5)
