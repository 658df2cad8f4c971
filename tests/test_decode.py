"""The one-token decoder against the model's own forward with a KV cache, for every model option."""

import pytest
import torch

from moelab import KVCache, Transformer
from moelab.generate.decoder import TokenDecoder
from moelab.train.precision import autocast
from moelab.generate.loop import generate, iter_generate
from tests.test_model import reference_generation, small_config

OPTIONS = {
    "learned positions": {"pos_encoding": "learned"},
    "sinusoidal positions": {"pos_encoding": "sinusoidal"},
    "rope + qk-norm": {"pos_encoding": "rope", "qk_norm": True},
    "no biases, relu2": {"bias": False, "activation": "relu2"},
    "no common expert, top-1, bias balancing": {"n_common_experts": 0, "top_k": 1, "balance": "bias"},
    "two common experts, granularity 2": {"n_common_experts": 2, "expert_granularity": 2},
    "sigmoid gate, bias balancing": {"gate": "sigmoid", "balance": "bias"},
    "untied head, soft-capped logits": {"tie_weights": False, "logit_softcap": 3.0},
    "dense": {"n_experts": 0, "n_common_experts": 2},
}


def model_with(options: dict) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(small_config(**options)).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.3)  # gains and biases other than the initial 1 and 0
        for block in model.blocks:
            if block.moe.router is not None and block.moe.router.balance_bias is not None:
                block.moe.router.balance_bias.copy_(torch.randn_like(block.moe.router.balance_bias) * 0.2)
    return model


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_decoder_computes_the_models_cached_forward(options):
    model = model_with(options)
    idx = torch.randint(0, 256, (1, 12))  # the whole window of 12
    decoder = TokenDecoder(model)
    mine, theirs = KVCache(model.config, 1, idx.device, torch.float64), KVCache(model.config, 1, idx.device, torch.float64)
    with torch.no_grad():
        model(idx[:, :3], kv_cache=mine)
        model(idx[:, :3], kv_cache=theirs)  # a prefix in one forward, as generation fills the cache
        for t in range(3, 12):
            logits, routing = decoder(int(idx[0, t]), mine, record_routing=True)
            out = model(idx[:, t : t + 1], kv_cache=theirs, record_routing=True)
            torch.testing.assert_close(logits, out.logits[:, -1], rtol=1e-10, atol=1e-10)
            assert mine.length == theirs.length == t + 1
            for record, expected in zip(routing, out.routing):
                if expected is None:  # a dense layer
                    assert record is None
                    continue
                assert torch.equal(record.experts, expected.experts[:, -1])
                torch.testing.assert_close(record.weights, expected.weights[:, -1], rtol=1e-10, atol=1e-10)
                torch.testing.assert_close(record.probs, expected.probs[:, -1], rtol=1e-10, atol=1e-10)
                assert not record.dropped.any()
    torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mine.values, theirs.values, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="KV cache is full"):
        decoder(0, mine)


@pytest.mark.parametrize("window", ["slide", "crop"])
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.8, "top_k": 50}], ids=["greedy", "sampled"])
def test_batch_one_generation_runs_the_decoder_and_equals_recomputation(window, sampling, monkeypatch):
    model = model_with(OPTIONS["rope + qk-norm"])
    calls = []
    step = TokenDecoder.__call__
    monkeypatch.setattr(TokenDecoder, "__call__", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    prompt = torch.randint(0, 256, (1, 3))
    cached = generate(model, prompt, 30, seed=7, window=window, **sampling)  # 30 past a window of 12
    # the decoder writes every token the cache serves: 26 with slide (four fills of the cache are the
    # model's forward), 9 with crop (until the window is full; then crop recomputes the window)
    assert len(calls) == (26 if window == "slide" else 9)
    assert torch.equal(cached, generate(model, prompt, 30, seed=7, window=window, use_cache=False, **sampling))
    assert torch.equal(cached, reference_generation(model, prompt, 30, window, seed=7, **sampling))


def test_streamed_routing_is_the_models_routing_of_each_token():
    model = model_with(OPTIONS["sigmoid gate, bias balancing"])
    prompt = torch.randint(0, 256, (1, 4))
    steps = list(iter_generate(model, prompt, 6, temperature=0.0, record_routing=True))
    seq = torch.cat([prompt, torch.stack([s.tokens for s in steps], 1)], 1)
    full = model(seq[:, :-1], record_routing=True).routing  # position p predicts token p + 1
    for i, step in enumerate(steps):
        p = prompt.shape[1] - 1 + i
        for record, expected in zip(step.routing, full):
            assert torch.equal(record.experts, expected.experts[:, p])
            torch.testing.assert_close(record.weights, expected.weights[:, p], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(record.probs, expected.probs[:, p], rtol=1e-10, atol=1e-10)


def test_decoder_applies_to_one_cpu_row_without_autocast_or_capacity():
    model = model_with({})
    one, two = torch.zeros(1, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    assert TokenDecoder.applies(model, one) and not TokenDecoder.applies(model, two)
    assert not TokenDecoder.applies(model_with({"capacity_factor": 1.0}), one)
    with autocast("bf16", "cpu"):
        assert not TokenDecoder.applies(model, one)


@pytest.mark.parametrize("rows", [1, 2], ids=["decoder", "model's forward"])
def test_a_dense_model_streams_no_routing(rows):
    model = model_with(OPTIONS["dense"])
    steps = list(iter_generate(model, torch.zeros(rows, 3, dtype=torch.long), 3, record_routing=True))
    assert all(step.routing == [None, None] for step in steps)
