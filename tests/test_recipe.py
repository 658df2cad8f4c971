"""The recipe options: optimizer="muon", activation="relu2", qk_norm, logit_softcap, tie_weights=False.

Each is checked against an independent reference: torch.optim.Muon on every matrix, one
token at a time through each expert, the formulas, and moelab.bench.baseline's per-head model.
The defaults stay today's model and optimizer (the other test files check those).
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moelab import KVCache, ModelConfig, TrainConfig, Transformer, load_model
from moelab.nn.moe.experts import Experts
from moelab.generate.next_token import sample_next_token
from moelab.nn.model import decay_groups
from moelab.train.optim import (
    Muon,
    MuonWithAdamW,
    hidden_matrices,
    load_optimizer_state,
    make_optimizer,
    newton_schulz_dtype,
    orthogonalize,
)
from moelab.train.precision import bf16_support
from moelab.config.presets import build_configs
from moelab.train.trainer import Trainer
from moelab.generate.loop import generate
from tests.test_model import same_as_naive

RECIPE = {"optimizer": "muon", "activation": "relu2", "qk_norm": True, "logit_softcap": 30.0, "tie_weights": False}
MODEL_RECIPE = {k: v for k, v in RECIPE.items() if k != "optimizer"}


def relu_squared(h: torch.Tensor) -> torch.Tensor:
    return torch.relu(h) ** 2


ACTIVATIONS = {"gelu": F.gelu, "relu2": relu_squared}  # written out, not moelab.nn.moe.experts'


def small_config(**changes) -> ModelConfig:
    base = ModelConfig(
        n_layers=2, n_heads=2, n_embd=16, context_window=12, n_experts=4, top_k=2, n_common_experts=1, expert_hidden=24
    )
    return base.replace(**changes)


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"activation": "swiglu"}, "activation: must be one of gelu, relu2; got 'swiglu'"),
        ({"qk_norm": "yes"}, "qk_norm: must be true or false, got 'yes'"),
        (
            {"logit_softcap": 0.0},
            "logit_softcap: must be a finite number > 0 (the cap c of c · tanh(logits / c)) or None, got 0.0",
        ),
        ({"logit_softcap": -15}, "logit_softcap: must be a finite number > 0"),
        ({"logit_softcap": float("inf")}, "logit_softcap: must be a finite number > 0"),
        ({"logit_softcap": "30"}, "logit_softcap: must be a number or None, got '30'"),
        ({"tie_weights": 0}, "tie_weights: must be true or false, got 0"),
    ],
)
def test_bad_model_recipe_values_name_the_field_the_value_and_what_is_allowed(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**changes)


def test_bad_optimizer_names_the_field_the_value_and_the_choices():
    with pytest.raises(ValueError, match=re.escape("optimizer: must be one of adamw, muon; got 'sgd'")):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer: must be one of adamw, muon; got 'Muon'"):
        build_configs("cpu", {"optimizer": "Muon"})


def test_every_option_goes_through_build_configs():
    model, train = build_configs("seed", RECIPE)  # seed trains with AdamW (cpu and long adopted Muon)
    assert (model.activation, model.qk_norm, model.logit_softcap, model.tie_weights) == ("relu2", True, 30.0, False)
    assert train.optimizer == "muon"
    default_model, default_train = build_configs("seed", {})
    assert (default_model.activation, default_model.qk_norm, default_model.logit_softcap) == ("gelu", False, None)
    assert default_model.tie_weights and default_train.optimizer == "adamw"
    assert ModelConfig.from_dict(model.to_dict()) == model and TrainConfig.from_dict(train.to_dict()) == train


@pytest.mark.parametrize(
    "changes",
    [{}, {"qk_norm": True}, {"tie_weights": False}, {"qk_norm": True, "tie_weights": False, "bias": False},
     {**MODEL_RECIPE, "n_experts": 0, "pos_encoding": "learned"}],
    ids=str,
)
def test_parameter_counts_match_the_module(changes):
    config = small_config(**changes)
    model = Transformer(config)
    counted, formula = model.num_parameters(), config.param_counts()
    assert (counted["total"], counted["active"]) == (formula["total"], formula["active"])
    assert counted["total"] == sum(p.numel() for p in model.parameters())  # a tied head is counted once
    untied_head = 0 if config.tie_weights else config.n_embd * config.vocab_size
    assert formula["total"] - small_config(**{**changes, "tie_weights": True}).param_counts()["total"] == untied_head
    gains = 2 * config.head_dim * config.n_layers if config.qk_norm else 0
    assert formula["total"] - small_config(**{**changes, "qk_norm": False}).param_counts()["total"] == gains


# ---------------------------------------------------------------------------- the model against references


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
@pytest.mark.parametrize(
    "changes",
    [{"activation": "relu2"}, {"qk_norm": True}, {"logit_softcap": 2.0}, {"tie_weights": False}, MODEL_RECIPE],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_per_head_naive_reference_computes_the_same_model(pos_encoding, changes):
    """moelab.bench.baseline's model (one module per head and per expert, written out) with moelab's weights."""
    config = small_config(pos_encoding=pos_encoding, router_noise=False, n_common_experts=2, **changes)
    model, naive = same_as_naive(config)
    experts = model.blocks[1].moe.experts
    for e, expert in enumerate(naive.blocks[1].moe.experts):
        if expert.fc.weight.grad is not None:  # the naive model skips an expert without tokens
            torch.testing.assert_close(experts.w1.grad[e], expert.fc.weight.grad.T, rtol=1e-6, atol=1e-9)
    if config.qk_norm:  # the model's gain is shared by the heads: its gradient is the heads' sum
        attn, heads = model.blocks[0].attn, naive.blocks[0].heads
        torch.testing.assert_close(attn.q_norm.weight.grad, sum(h.q_gain.grad for h in heads), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(attn.k_norm.weight.grad, sum(h.k_gain.grad for h in heads), rtol=1e-6, atol=1e-9)


def test_logit_softcap_is_the_formula_for_the_loss_and_for_sampling():
    plain = Transformer(small_config()).double().eval()
    with torch.no_grad():
        plain.head.weight.mul_(40)  # logits well beyond the cap
    capped = Transformer(small_config(logit_softcap=5.0)).double().eval()
    capped.load_state_dict(plain.state_dict())
    idx, targets = torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 12))
    raw = plain(idx).logits
    assert raw.abs().max() > 10
    expected = 5.0 * torch.tanh(raw / 5.0)
    out = capped(idx, targets)
    torch.testing.assert_close(out.logits, expected, rtol=1e-12, atol=1e-12)
    assert out.logits.abs().max() < 5.0
    torch.testing.assert_close(out.ce_loss, F.cross_entropy(expected.reshape(-1, 256), targets.reshape(-1)))
    # generation samples from the capped logits
    prompt = idx[:, :4]
    generated = generate(capped, prompt, 1, seed=3)[:, -1]
    wanted = sample_next_token(5.0 * torch.tanh(plain(prompt).logits[:, -1] / 5.0), 1.0, None, None,
                               torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(generated, wanted)


def test_without_softcap_the_logits_are_the_heads_output_bit_for_bit():
    model = Transformer(small_config()).eval()
    seen = []
    model.head.register_forward_hook(lambda module, args, output: seen.append(output))
    logits = model(torch.randint(0, 256, (2, 12))).logits
    assert torch.equal(logits, seen[0])


@pytest.mark.on_device
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_kv_cached_generation_equals_recomputation_with_every_model_option(pos_encoding, capacity_factor, device):
    config = small_config(pos_encoding=pos_encoding, capacity_factor=capacity_factor, **MODEL_RECIPE)
    model = Transformer(config).double().eval().to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)  # gains other than 1
    idx = torch.randint(0, 256, (3, 11)).to(device)
    full = model(idx).logits
    cache = KVCache(model.config, 3, idx.device, torch.float64)
    parts = [model(idx[:, a:b], kv_cache=cache).logits for a, b in ((0, 4), (4, 9), (9, 10))]
    torch.testing.assert_close(torch.cat(parts, 1), full[:, :10], rtol=1e-9, atol=1e-9)
    prompt = idx[:2, :3]
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0}):
        cached = generate(model, prompt, 20, seed=7, use_cache=True, **sampling)  # past the window of 12
        assert torch.equal(cached, generate(model, prompt, 20, seed=7, use_cache=False, **sampling))


def test_qk_norm_on_the_padded_head_path_computes_the_same():
    """Head size 10, padded to 16 for the fused CUDA kernels (forced on here, on the CPU)."""
    config = small_config(n_embd=20, n_heads=2, pos_encoding="rope", router_noise=False, **MODEL_RECIPE)
    model = Transformer(config).double()
    idx = torch.randint(0, 256, (2, 8))
    results = []
    for pad in (False, True):
        model.set_padding(head_dim=pad)
        assert all(block.attn.pad_head_dim is pad for block in model.blocks)
        model.zero_grad()
        out = model(idx, idx)
        out.loss.backward()
        generated = generate(model.eval(), idx[:, :3], 6, temperature=0.0)
        model.train()
        results.append((out.logits.detach(), model.blocks[0].attn.q_norm.weight.grad.clone(), generated))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-10)
    assert results[0][1].abs().sum() > 0 and torch.equal(results[1][2], results[0][2])


def test_untied_head_is_its_own_decayed_matrix():
    tied = Transformer(small_config())
    untied = Transformer(small_config(tie_weights=False))
    assert tied.head.weight is tied.tok_emb.weight and untied.head.weight is not untied.tok_emb.weight
    assert "head.weight" not in dict(tied.named_parameters())
    assert [n for n, _ in decay_groups(untied)[0]][-1] == "head.weight"
    assert untied.head.weight.std().item() == pytest.approx(0.02, rel=0.1)  # GPT-2's init, as the embedding


# ---------------------------------------------------------------------------- activation in every kernel


def per_token_experts(experts: Experts, x: torch.Tensor, counts: list[int], act) -> torch.Tensor:
    """Each row through its expert, one row at a time: act(x w1 + b1) w2 + b2."""
    owner = [e for e, count in enumerate(counts) for _ in range(count)]
    rows = [act(x[i] @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e] for i, e in enumerate(owner)]
    return torch.stack(rows)


@pytest.mark.on_device
@pytest.mark.parametrize("kernel", ["plain", "loop", "grouped"])
@pytest.mark.parametrize("activation", ["relu2", "gelu"])
def test_every_kernel_matches_a_per_token_reference(kernel, activation, device):
    if device.type == "cuda" and kernel == "grouped":
        pytest.skip("fp32 grouped_mm is never used on CUDA (test_moe checks the bf16 kernels against plain)")
    torch.manual_seed(0)
    experts = Experts(4, 10, 20, True, kernel=kernel, activation=activation).to(device)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.3)  # pre-activations on both sides of 0
    counts = [5, 0, 6, 2]
    x = torch.randn(13, 10, device=device, requires_grad=True)
    weight = torch.linspace(-1, 1, 130, device=device).view(13, 10)
    results = []
    for run in (lambda: experts(x, torch.tensor(counts, device=device)), lambda: per_token_experts(experts, x, counts, ACTIVATIONS[activation])):
        experts.zero_grad()
        x.grad = None
        out = run()
        (out * weight).sum().backward()
        results.append([out.detach(), x.grad.clone()] + [p.grad.clone() for p in experts.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_one_token_decode_path_uses_the_activation():
    torch.manual_seed(0)
    experts = Experts(4, 10, 20, True, activation="relu2")
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.3)
    row, chosen, gates = torch.randn(1, 10), [2, 0], torch.tensor([0.7, 0.3])

    def gated_sum(act):
        return sum(g * (act(row @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e])
                   for e, g in zip(chosen, gates))  # fmt: skip

    torch.testing.assert_close(experts.one_token(row, chosen, gates), gated_sum(relu_squared))
    assert not torch.allclose(gated_sum(relu_squared), gated_sum(F.gelu))  # the activation matters here


@pytest.mark.skipif(not torch.cuda.is_available(), reason="grouped_mm in bf16 needs CUDA")
def test_relu2_kernels_in_bf16_on_cuda_match_a_per_token_reference():
    torch.manual_seed(0)
    counts = [17, 0, 9, 14]
    x = torch.randn(40, 12, device="cuda").bfloat16()
    reference = Experts(4, 12, 20, True, activation="relu2").cuda()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p).mul(0.3).bfloat16())  # exact in bf16: only the kernels round
    want = per_token_experts(reference, x.float(), counts, relu_squared)
    for kernel in ("auto", "grouped", "loop"):
        experts = Experts(4, 12, 20, True, kernel=kernel, activation="relu2").cuda()
        experts.load_state_dict(reference.state_dict())
        torch.testing.assert_close(experts(x, torch.tensor(counts, device="cuda")).float(), want, rtol=3e-2, atol=3e-2)


def test_unknown_activation_is_refused_by_the_experts():
    with pytest.raises(ValueError, match="activation must be one of gelu, relu2, got 'tanh'"):
        Experts(2, 4, 4, True, activation="tanh")


# ---------------------------------------------------------------------------- Muon


@pytest.mark.parametrize(
    "shape, row_blocks",
    [((12, 20), 1), ((20, 12), 1), ((3, 12, 20), 1), ((3, 20, 12), 1), ((3 * 8, 8), 3)],
    ids=["wide", "tall", "experts-wide", "experts-tall", "qkv"],
)
@pytest.mark.on_device
def test_muon_is_torch_muon_on_every_matrix(shape, row_blocks, device):
    """Each expert's (and each of q, k, v's) slice steps as torch.optim.Muon steps that slice as a 2-D parameter."""
    torch.manual_seed(0)
    rows, cols = shape[-2] // row_blocks, shape[-1]
    stacked = nn.Parameter(torch.randn(shape, device=device) * 0.1)
    slices = [nn.Parameter(m.clone()) for m in stacked.detach().reshape(-1, rows, cols)]
    # torch iterates in bf16 on every device; ours does where the device has native bf16 products
    ours = Muon([{"params": [stacked], "row_blocks": row_blocks}], lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    reference = torch.optim.Muon(slices, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = stacked.detach().clone()
    for step in range(4):
        grad = torch.randn(shape, device=device)
        stacked.grad = grad
        for p, g in zip(slices, grad.reshape(-1, rows, cols)):
            p.grad = g.clone()
        for group in ours.param_groups + reference.param_groups:  # as the Trainer's schedule does
            group["lr"] = 0.02 * (step + 1) / 4
        ours.step()
        reference.step()
    # Both orthogonalize in bf16. On the CPU the batched products round as torch's 2-D ones (bit for bit,
    # seen here); CUDA's batched kernels round differently, which five Newton–Schulz steps carry to ~1%
    # of the movement. A wrong split, scale or momentum differs by far more.
    tolerance = 0.03 * (stacked.detach() - start).abs().max().item()
    for mine, theirs in zip(stacked.detach().reshape(-1, rows, cols), slices):
        torch.testing.assert_close(mine, theirs.detach(), rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_orthogonalize_keeps_the_singular_vectors_and_pulls_the_values_towards_one(dtype):
    """Against the SVD G = U S V^T: the output is U S' V^T with every S' within Newton–Schulz's band around 1."""
    torch.manual_seed(0)
    g = torch.randn(3, 12, 20) * torch.logspace(-2, 1, 20)  # singular values over three decades
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    out = orthogonalize(g, dtype=dtype).float()
    inner = u.mT @ out @ vh.mT  # diagonal exactly when out shares g's singular vectors
    diagonal = torch.diagonal(inner, dim1=-2, dim2=-1)
    off = inner - torch.diag_embed(diagonal)
    assert off.abs().max() < (1e-4 if dtype == torch.float32 else 0.02), off.abs().max()
    assert ((0.6 < diagonal) & (diagonal < 1.25)).all(), diagonal


def test_newton_schulz_runs_in_bf16_only_where_the_device_multiplies_it_natively():
    native = bf16_support(torch.device("cpu"))[0]
    assert newton_schulz_dtype(torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert orthogonalize(torch.randn(4, 6)).dtype == newton_schulz_dtype(torch.device("cpu"))


def test_muon_update_has_about_adamws_rms():
    """match_rms_adamw: one step of Muon moves each matrix by an RMS of about 0.2 · lr."""
    torch.manual_seed(0)
    experts = nn.Parameter(torch.zeros(4, 16, 64))
    experts.grad = torch.randn(4, 16, 64)
    Muon([{"params": [experts]}], lr=0.01).step()
    rms = experts.detach().pow(2).mean(dim=(1, 2)).sqrt()
    assert ((0.1 * 0.01 < rms) & (rms < 0.3 * 0.01)).all(), rms


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    config = small_config(n_layers=1, qk_norm=True, tie_weights=False, bias=True, router_noise=True)
    model = Transformer(config)
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", weight_decay=0.1), torch.device("cpu"))
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = optimizer.muon.param_groups
    muon = [(names[id(p)], group["row_blocks"], group["weight_decay"]) for group in groups for p in group["params"]]
    assert sorted(muon) == [
        ("blocks.0.attn.proj.weight", 1, 0.1),
        ("blocks.0.attn.qkv.weight", 3, 0.1),
        ("blocks.0.moe.common.fc.weight", 1, 0.1),
        ("blocks.0.moe.common.proj.weight", 1, 0.1),
        ("blocks.0.moe.experts.w1", 1, 0.1),
        ("blocks.0.moe.experts.w2", 1, 0.1),
    ]
    in_order = [n for n, _ in model.named_parameters() if n in {name for name, _, _ in muon}]
    assert [n for n, _, _ in hidden_matrices(model)] == in_order
    decayed, kept = optimizer.adamw.param_groups
    assert [names[id(p)] for p in decayed["params"]] == ["tok_emb.weight", "pos_emb.weight", "blocks.0.moe.router.gate.weight",
                                                         "head.weight"]  # fmt: skip
    assert (decayed["weight_decay"], kept["weight_decay"]) == (0.1, 0.0)
    assert "blocks.0.moe.router.noise.weight" in [names[id(p)] for p in kept["params"]]
    assert "blocks.0.attn.q_norm.weight" in [names[id(p)] for p in kept["params"]]
    every = [p for g in optimizer.param_groups for p in g["params"]]
    assert sorted(map(id, every)) == sorted(id(p) for p in model.parameters())  # each parameter exactly once


def test_an_optimizer_state_of_the_other_kind_is_refused():
    model = Transformer(small_config())
    adamw = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    muon = make_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))).loss.backward()
    adamw.step()
    muon.step()
    with pytest.raises(ValueError, match="optimizer='adamw', this run trains with optimizer='muon'"):
        load_optimizer_state(muon, model, adamw.state_dict())
    with pytest.raises(ValueError, match="optimizer='muon', this run trains with optimizer='adamw'"):
        load_optimizer_state(adamw, model, muon.state_dict())
    assert isinstance(adamw, torch.optim.AdamW)  # the default is today's optimizer
    fresh = make_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    load_optimizer_state(fresh, model, muon.state_dict())
    for _, p, _ in hidden_matrices(model):
        assert torch.equal(fresh.muon.state[p]["momentum_buffer"], muon.muon.state[p]["momentum_buffer"])
    embedding = model.tok_emb.weight
    assert torch.equal(fresh.adamw.state[embedding]["exp_avg"], muon.adamw.state[embedding]["exp_avg"])


# ---------------------------------------------------------------------------- training


def recipe_configs(**changes):
    return build_configs("tiny", {**RECIPE, "log_every": 1, **changes})


def test_the_whole_recipe_trains_and_reloads(toy_dataset):
    model_config, train_config = recipe_configs(max_steps=8)
    torch.manual_seed(train_config.seed)  # the Trainer starts from this model
    start = Transformer(model_config).state_dict()
    trainer = Trainer(model_config, train_config, "recipe-trains", dataset=toy_dataset, progress=False)
    result = trainer.fit()
    losses = result.metrics["loss"]
    assert losses.map(math.isfinite).all() and losses.iloc[-1] < losses.iloc[0] - 0.5
    assert all(g["lr"] == result.metrics["lr"].iloc[-1] for g in trainer.optimizer.param_groups)  # one schedule
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), start[n])}
    assert {"head.weight", "tok_emb.weight", "blocks.0.attn.q_norm.weight", "blocks.0.moe.experts.w1"} <= moved
    reloaded = load_model(result.checkpoint)
    x = torch.randint(0, 256, (2, 16))
    assert torch.equal(reloaded(x).logits, trainer.model.cpu().eval()(x).logits)


def test_resume_with_muon_continues_exactly(toy_dataset):
    # on the CPU: resuming on CUDA stops earlier, at the sampler's RNG state (map_location moves it to the GPU)
    model_config, train_config = recipe_configs(max_steps=12, checkpoint_every=5)

    def trainer(run_name, train=train_config):
        return Trainer(model_config, train, run_name, dataset=toy_dataset, device="cpu", progress=False)

    full = trainer("recipe-straight").fit().metrics
    trainer("recipe-resumed").fit(stop_after_steps=5)
    metrics = trainer("recipe-resumed").fit(resume=True).metrics
    assert metrics["step"].tolist() == list(range(1, 13))
    for column in ("loss", "lr", "grad_norm"):
        assert metrics[column].tolist() == full[column].tolist(), column
    with pytest.raises(ValueError, match="optimizer='muon', this run trains with optimizer='adamw'"):
        trainer("recipe-resumed", train_config.replace(optimizer="adamw")).fit(resume=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_whole_recipe_trains_in_bf16_on_cuda(toy_dataset):
    model_config, train_config = recipe_configs(max_steps=8, precision="bf16")
    trainer = Trainer(model_config, train_config, "recipe-cuda", dataset=toy_dataset, device="cuda", progress=False)
    losses = trainer.fit().metrics["loss"]
    assert losses.map(math.isfinite).all() and losses.iloc[-1] < losses.iloc[0] - 0.5
