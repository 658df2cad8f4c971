from pathlib import Path

import pytest
import torch

from moelab import ByteTokenizer, KVCache, ModelConfig, Transformer, preset
from moelab.generate.next_token import sample_next_token
from moelab.nn.aligned import Linear
from moelab.nn.model import init_parameters
from moelab.generate.loop import generate, iter_generate

FIXTURES = Path(__file__).parent / "fixtures"

POS_ENCODINGS = ["learned", "sinusoidal", "rope"]


def small_config(**changes) -> ModelConfig:
    base = ModelConfig(
        n_layers=2, n_heads=2, n_embd=16, context_window=12, n_experts=4, top_k=2, n_common_experts=1, expert_hidden=24
    )
    return base.replace(**changes)


def make_model(**changes) -> Transformer:
    return Transformer(small_config(**changes)).double().eval()


@pytest.mark.on_device
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("capacity_factor", [None, 1.0, 0.5])
def test_causality(pos_encoding, capacity_factor, device):
    model = make_model(pos_encoding=pos_encoding, capacity_factor=capacity_factor).to(device)
    idx = torch.randint(0, 256, (1, 12)).to(device)
    logits = model(idx).logits
    for t in (0, 5, 11):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % 256
        new_logits = model(changed).logits
        torch.testing.assert_close(new_logits[:, :t], logits[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(new_logits[:, t], logits[:, t])


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_rows_do_not_depend_on_their_batch_neighbours(capacity_factor):
    model = make_model(capacity_factor=capacity_factor)
    idx = torch.randint(0, 256, (3, 12))
    logits = model(idx).logits
    changed = idx.clone()
    changed[0] = torch.randint(0, 256, (12,))
    torch.testing.assert_close(model(changed).logits[1:], logits[1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(model(idx[2:]).logits, logits[2:], rtol=0, atol=1e-12)  # batch size 1


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_a_prefix_gives_the_logits_of_the_same_positions_of_the_whole(capacity_factor):
    model = make_model(capacity_factor=capacity_factor)
    idx = torch.randint(0, 256, (2, 12))
    routing = model(idx, record_routing=True).routing
    assert capacity_factor is None or any(r.dropped.any() for r in routing)  # the capacity path is exercised
    torch.testing.assert_close(model(idx[:, :7]).logits, model(idx).logits[:, :7], rtol=0, atol=1e-12)


def test_positions_matter():
    """Without positions, attention cannot tell "ABC" from "BAC" at the last byte."""
    for pos_encoding in POS_ENCODINGS:
        model = make_model(pos_encoding=pos_encoding)
        abc = model(torch.tensor([[65, 66, 67]])).logits[0, -1]
        bac = model(torch.tensor([[66, 65, 67]])).logits[0, -1]
        assert not torch.allclose(abc, bac), pos_encoding


@pytest.mark.on_device
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_cached_prefix_then_chunk_matches_full_forward(pos_encoding, capacity_factor, device):
    model = make_model(pos_encoding=pos_encoding, capacity_factor=capacity_factor).to(device)
    idx = torch.randint(0, 256, (3, 11)).to(device)
    full = model(idx).logits
    cache = KVCache(model.config, 3, idx.device, torch.float64)
    first = model(idx[:, :4], kv_cache=cache).logits
    second = model(idx[:, 4:9], kv_cache=cache).logits  # several queries after a prefix
    third = model(idx[:, 9:10], kv_cache=cache).logits
    torch.testing.assert_close(torch.cat([first, second, third], 1), full[:, :10], rtol=1e-9, atol=1e-9)
    assert cache.length == 10


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.7, "top_k": 20, "top_p": 0.9}],
    ids=["greedy", "sampled", "top-k-top-p"],
)
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
@pytest.mark.parametrize("window", ["slide", "crop"])
@pytest.mark.on_device
def test_kv_cached_generation_equals_full_recomputation(pos_encoding, sampling, capacity_factor, window, device):
    model = make_model(pos_encoding=pos_encoding, capacity_factor=capacity_factor).to(device)
    prompt = torch.randint(0, 256, (2, 3)).to(device)
    # 30 new tokens with a window of 12: runs past the window (slide refills its cache three times)
    cached = generate(model, prompt, 30, seed=7, use_cache=True, window=window, **sampling)
    full = generate(model, prompt, 30, seed=7, use_cache=False, window=window, **sampling)
    assert cached.shape == (2, 33)
    assert torch.equal(cached, full)
    assert torch.equal(cached, reference_generation(model, prompt, 30, window, seed=7, **sampling))


def reference_generation(model, prompt, n, window, seed, temperature=1.0, top_k=None, top_p=None):
    """Each step recomputes its whole context from scratch: crop = the last W tokens; slide = the
    tokens since a start that jumps to the last W/2 whenever the context would exceed W."""
    W = model.config.context_window
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    seq, start = prompt, max(0, prompt.shape[1] - W)
    for _ in range(n):
        if window == "crop":
            start = max(0, seq.shape[1] - W)
        elif seq.shape[1] - start > W:
            start = seq.shape[1] - W // 2
        assert W // 2 <= seq.shape[1] - start <= W or start == 0
        logits = model(seq[:, start:]).logits[:, -1]
        seq = torch.cat([seq, sample_next_token(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
    return seq


def test_generation_window_mode_is_checked():
    with pytest.raises(ValueError, match="window must be one of 'slide', 'crop'"):
        generate(make_model(), torch.zeros(1, 2, dtype=torch.long), 3, window="wrap")


def test_generation_is_reproducible_with_a_seed_and_varies_without():
    model = make_model()
    prompt = torch.randint(0, 256, (1, 4))
    a = generate(model, prompt, 30, seed=1)
    assert torch.equal(a, generate(model, prompt, 30, seed=1))
    assert not torch.equal(a, generate(model, prompt, 30, seed=2))


def test_generation_crops_long_prompts_and_keeps_training_mode():
    model = make_model().train()
    prompt = torch.randint(0, 256, (1, 30))  # longer than the window of 12
    out = generate(model, prompt, 5, temperature=0)
    assert out.shape == (1, 35) and model.training
    expected = generate(model.eval(), prompt[:, -12:], 5, temperature=0)
    assert torch.equal(out[:, -5:], expected[:, -5:])


def test_batch_generation_rows_match_single_generation_when_greedy():
    model = make_model()
    prompts = torch.randint(0, 256, (3, 5))
    batch = generate(model, prompts, 8, temperature=0)
    for row in range(3):
        assert torch.equal(batch[row : row + 1], generate(model, prompts[row : row + 1], 8, temperature=0))


def test_iter_generate_streams_routing():
    model = make_model()
    steps = list(iter_generate(model, torch.randint(0, 256, (2, 4)), 3, seed=0, record_routing=True))
    assert len(steps) == 3
    assert steps[0].tokens.shape == (2,)
    assert len(steps[0].routing) == 2 and steps[0].routing[0].experts.shape == (2, 2)


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next_token(logits, 1.0, 1, None, gen).item() for _ in range(50)}
    assert draws == {1}  # top_k=1 is greedy
    draws = {sample_next_token(logits, 1.0, None, 0.01, gen).item() for _ in range(50)}
    assert draws == {1}  # a tiny nucleus keeps only the best token
    draws = {sample_next_token(logits, 1.0, 2, None, gen).item() for _ in range(200)}
    assert draws == {1, 2}
    # p=0.8: softmax = [.087, .645, .237, .032]; 0.645 < 0.8 so the 2nd token is needed, not the 3rd
    draws = {sample_next_token(logits, 1.0, None, 0.8, gen).item() for _ in range(200)}
    assert draws == {1, 2}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 300}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(make_model(), torch.zeros(1, 2, dtype=torch.long), 3, **kwargs)


def test_forward_rejects_too_long_or_wrong_dtype():
    model = make_model()
    with pytest.raises(ValueError, match="context_window=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(1, 4))


def test_loss_is_cross_entropy_plus_weighted_aux_terms():
    model = Transformer(small_config(aux_loss_coef=0.3, z_loss_coef=0.02)).double().eval()
    idx = torch.randint(0, 256, (2, 12))
    out = model(idx, idx)
    expected_ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), idx.reshape(-1))
    torch.testing.assert_close(out.ce_loss, expected_ce)
    torch.testing.assert_close(out.loss, out.ce_loss + 0.3 * out.aux_loss + 0.02 * out.z_loss)
    assert out.aux_loss.item() >= 1.0 - 1e-9 and out.z_loss.item() > 0
    targets = idx.clone()
    targets[:, :6] = -1  # ignored positions
    partial = torch.nn.functional.cross_entropy(out.logits[:, 6:].reshape(-1, 256), idx[:, 6:].reshape(-1))
    torch.testing.assert_close(model(idx, targets).ce_loss, partial)


def test_dense_model_is_the_same_code_without_routing():
    config = small_config()
    dense = Transformer(config.dense_equivalent())
    assert not hasattr(dense.blocks[0].moe, "gate")
    out = dense(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8)))
    assert out.aux_loss.item() == 0 and out.z_loss.item() == 0
    assert dense.num_parameters()["active"] == dense.num_parameters()["total"]
    # same active parameters per token, apart from the router
    moe_active = Transformer(config).num_parameters()["active"]
    router = config.n_layers * 2 * config.n_embd * config.n_experts
    bias_difference = config.n_layers * config.n_embd * (config.top_k)  # per-expert output biases
    assert moe_active - router - bias_difference == dense.num_parameters()["active"]


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = Transformer(preset("tiny").model)
    text = torch.tensor(ByteTokenizer().encode("o rato roeu a roupa do rei de roma. " * 4))
    x, y = text[:16].unsqueeze(0), text[1:17].unsqueeze(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(x, y).loss.item()
    for _ in range(30):
        optimizer.zero_grad()
        model(x, y).loss.backward()
        optimizer.step()
    assert model(x, y).loss.item() < first - 1.0
    assert all(p.grad is not None for n, p in model.named_parameters() if "noise" not in n)


@pytest.mark.parametrize("name", ["seed", "cpu", "long", "tiny"])
def test_preset_parameter_counts_match_the_formula(name):
    config = preset(name).model
    with torch.device("meta"):
        model = Transformer(config)
    counted = model.num_parameters()
    formula = config.param_counts()
    assert counted["total"] == formula["total"]
    assert counted["active"] == formula["active"]
    print(f"{name}: {counted['total']:,} parameters, {counted['active']:,} active per token")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("router_noise", [True, False])
def test_fine_grained_experts_keep_the_expert_parameters(bias, router_noise):
    """DeepSeekMoE's split (arXiv 2401.06066): 4 experts top-2 of width 24 -> 16 experts top-8 of width 6.

    The routed experts' matrices keep their total and active sizes; the router grows 4-fold and each
    fine-grained expert has its own output bias. The formula matches the built module for both.
    """
    coarse = small_config(bias=bias, router_noise=router_noise)
    fine = coarse.replace(expert_granularity=4)
    tables = {}
    for config in (coarse, fine):
        with torch.device("meta"):
            model = Transformer(config)
        counts = config.param_counts()
        assert model.num_parameters() == {"total": counts["total"], "active": counts["active"]}
        tables[config.expert_granularity] = model.parameter_table()
    moe = Transformer(fine).blocks[0].moe
    assert moe.experts.w1.shape == (16, 16, 6) and moe.router.gate.weight.shape == (16, 16) and moe.top_k == 8
    assert moe.common.fc.weight.shape == (24, 16)  # the common expert keeps its width
    L, n, k, d, m = 2, 4, 2, 16, 4
    routed = tables[4].loc["routed experts"] - tables[1].loc["routed experts"]
    assert routed.tolist() == [L * n * (m - 1) * d * bias, L * k * (m - 1) * d * bias]  # total, active: b2 only
    router_growth = L * n * (m - 1) * d * (2 if router_noise else 1)
    assert (tables[4].loc["router"] - tables[1].loc["router"]).tolist() == [router_growth] * 2
    assert fine.param_counts()["matmul"] - coarse.param_counts()["matmul"] == router_growth


def test_seed_preset_is_the_seeds_hyperparameters():
    p = preset("seed")
    m, t = p.model, p.train
    assert (m.n_embd, m.n_layers, m.n_heads, m.context_window, m.n_experts, m.top_k) == (1028, 6, 4, 32, 8, 2)
    assert m.n_common_experts == 2 and m.vocab_size == 256
    assert (t.lr, t.batch_size, t.max_steps, t.current_context_window, t.context_window_step) == (1e-4, 64, 2000, 8, 8)
    # ~0.53 B parameters in all, ~0.23 B active per token
    counts = m.param_counts()
    assert 0.5e9 < counts["total"] < 0.56e9 and 0.2e9 < counts["active"] < 0.25e9


def same_as_naive(config: ModelConfig):
    """A float64 model with perturbed parameters (non-zero biases, non-trivial gains) and moelab.bench.baseline's
    per-head, per-expert-mask copy of it: equal logits and loss, both backpropagated; returns (model, naive)."""
    from moelab.bench.baseline import NaiveTransformer

    model = Transformer(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    naive = NaiveTransformer.from_model(model)
    idx, targets = torch.randint(0, 256, (3, 12)), torch.randint(0, 256, (3, 12))
    out = model(idx, targets)
    logits, loss = naive(idx, targets)
    torch.testing.assert_close(out.logits, logits, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(out.loss, loss, rtol=1e-9, atol=1e-9)
    out.loss.backward()
    loss.backward()
    return model, naive


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("bias", [True, False])
def test_naive_seed_style_reference_computes_the_same_model(pos_encoding, bias):
    """moelab.bench.baseline's per-head, per-expert-mask model (the benchmark's baseline) with moelab's
    weights gives the same logits, loss and gradients."""
    model, naive = same_as_naive(small_config(pos_encoding=pos_encoding, bias=bias, n_common_experts=2, router_noise=False))
    qkv_grad = torch.cat(
        [torch.cat([getattr(h, part).weight.grad for h in naive.blocks[0].heads]) for part in ("query", "key", "value")]
    )
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.grad, qkv_grad, rtol=1e-6, atol=1e-9)
    experts = model.blocks[1].moe.experts
    for e, expert in enumerate(naive.blocks[1].moe.experts):
        unused = expert.fc.weight.grad is None  # the naive model skips an expert that got no token
        w1_grad = torch.zeros_like(experts.w1[e]) if unused else expert.fc.weight.grad.T
        w2_grad = torch.zeros_like(experts.w2[e]) if unused else expert.proj.weight.grad.T
        torch.testing.assert_close(experts.w1.grad[e], w1_grad, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(experts.w2.grad[e], w2_grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(model.blocks[1].moe.router.gate.weight.grad, naive.blocks[1].moe.gate.weight.grad, rtol=1e-6, atol=1e-9)


def test_checkpoint_of_the_previous_version_loads_and_gives_its_logits():
    """tests/fixtures/checkpoint_6f3e1e7.pt was written by moelab at commit 6f3e1e7 (state_dict keys unchanged)."""
    from moelab import load_checkpoint, load_model

    path = FIXTURES / "checkpoint_6f3e1e7.pt"
    model, extra = load_model(path), load_checkpoint(path)["extra"]
    assert model.config.balance == "aux_loss" and model.blocks[0].moe.router.balance_bias is None  # the routing of its time
    logits = model(torch.tensor(extra["idx"])).logits[:, -1]
    torch.testing.assert_close(logits, torch.tensor(extra["logits"]), rtol=1e-5, atol=1e-5)
    # it was built with torch.manual_seed(0): today's initialization rule draws the same weights
    torch.manual_seed(0)
    fresh = Transformer(model.config).state_dict()
    assert fresh.keys() == model.state_dict().keys()
    assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())


def test_initialization_rule():
    """GPT-2's rule by rank and markers: matrices N(0, .02), residual projections N(0, .02/sqrt(2L)), gains 1, biases 0."""
    torch.manual_seed(0)
    config = small_config(n_layers=3, n_embd=64, n_heads=2, expert_hidden=256, n_experts=8, context_window=64)
    model = Transformer(config)
    residual_std = 0.02 / (2 * 3) ** 0.5
    stds = {n: p.std().item() for n, p in model.named_parameters() if p.dim() >= 2 and "b1" not in n and "b2" not in n}
    for name, std in stds.items():
        expected = residual_std if name.endswith(("attn.proj.weight", "common.proj.weight", "experts.w2")) else 0.02
        assert std == pytest.approx(expected, rel=0.1), name
    block = model.blocks[0]
    for p in (block.ln1.weight, model.ln_f.weight):
        assert torch.equal(p, torch.ones_like(p))
    for p in (block.ln1.bias, block.attn.qkv.bias, block.moe.experts.b1, block.moe.experts.b2, model.head.bias):
        assert torch.equal(p, torch.zeros_like(p))
    with torch.no_grad():
        model.blocks[0].ln1.weight.fill_(3.0)
    init_parameters(model, config.n_layers)  # the rule alone re-draws every parameter
    assert torch.equal(model.blocks[0].ln1.weight, torch.ones_like(model.blocks[0].ln1.weight))


def test_set_padding_reaches_every_linear_layer_and_attention():
    model = Transformer(ModelConfig(n_layers=2, n_heads=2, n_embd=16, context_window=8, n_experts=4, top_k=2))
    model.set_padding(widths=False, head_dim=True)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) >= 2 * 3 + 1 and all(m.pad_on_cuda is False for m in linears)  # qkv, proj, router per layer; head
    assert all(block.attn.pad_head_dim is True for block in model.blocks)
    model.set_padding()
    assert all(m.pad_on_cuda for m in linears) and all(block.attn.pad_head_dim is None for block in model.blocks)
