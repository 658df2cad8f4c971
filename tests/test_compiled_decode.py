"""The compiled one-token step against the model's own cached forward, and its fallback."""

import shutil
import warnings

import pytest
import torch

import moelab.generate.compiled as compiled
from moelab import KVCache, Transformer
from moelab.generate.compiled import CompiledDecoder, break_even_tokens
from moelab.generate.decoder import TokenDecoder
from moelab.generate.loop import generate
from tests.test_model import small_config

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                    reason="Inductor compiles C++ on the CPU: no g++ or clang++ here")  # fmt: skip

# every option the step branches on, in four models (each configuration is one compilation)
MODELS = {
    "rope + qk-norm, sigmoid gate, bias balancing": {"pos_encoding": "rope", "qk_norm": True, "gate": "sigmoid",
                                                    "balance": "bias"},
    "learned positions, no biases, relu2, top-1, no common expert": {"pos_encoding": "learned", "bias": False,
        "activation": "relu2", "top_k": 1, "n_common_experts": 0},
    "sinusoidal, untied soft-capped head, granularity 2": {"pos_encoding": "sinusoidal", "tie_weights": False,
        "logit_softcap": 3.0, "n_common_experts": 2, "expert_granularity": 2},
    "dense": {"n_experts": 0, "n_common_experts": 2},
}  # fmt: skip


def model_with(options: dict, seed: int = 0) -> Transformer:
    """A float32 model with norm gains and biases and balance biases away from their initial values."""
    torch.manual_seed(seed)
    model = Transformer(small_config(**options)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
        for block in model.blocks:
            if block.moe.router is not None and block.moe.router.balance_bias is not None:
                block.moe.router.balance_bias.copy_(torch.randn_like(block.moe.router.balance_bias) * 0.2)
    return model


def assert_steps_match_the_cached_forward(model: Transformer, decoder) -> None:
    """Every step of ``decoder`` from position 3 to the end of the window: logits to 1e-5, the
    same routing and the same keys and values as the model's forward with a KV cache."""
    W = model.config.context_window
    idx = torch.randint(0, 256, (1, W), generator=torch.Generator().manual_seed(1))
    mine, theirs = (KVCache(model.config, 1, idx.device, torch.float32) for _ in range(2))
    with torch.no_grad():
        model(idx[:, :3], kv_cache=mine)
        model(idx[:, :3], kv_cache=theirs)
        for t in range(3, W):
            logits, routing = decoder(int(idx[0, t]), mine, record_routing=True)
            out = model(idx[:, t : t + 1], kv_cache=theirs, record_routing=True)
            torch.testing.assert_close(logits, out.logits[:, -1], rtol=1e-5, atol=1e-5)
            assert mine.length == theirs.length == t + 1
            for record, expected in zip(routing, out.routing):
                if expected is None:
                    assert record is None
                    continue
                assert torch.equal(record.experts, expected.experts[:, -1])
                torch.testing.assert_close(record.weights, expected.weights[:, -1], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(record.probs, expected.probs[:, -1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.values, theirs.values, rtol=1e-5, atol=1e-6)


@needs_compiler
@pytest.mark.parametrize("options", MODELS.values(), ids=MODELS.keys())
def test_the_compiled_step_computes_the_models_cached_forward(options):
    model = model_with(options)
    decoder = CompiledDecoder(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile could not compile")  # a fallback would warn
        assert_steps_match_the_cached_forward(model, decoder)
    assert decoder.compiled_once and CompiledDecoder.available()
    with pytest.raises(ValueError, match="KV cache is full"):
        decoder(0, _full_cache(model))


def _full_cache(model: Transformer) -> KVCache:
    cache = KVCache(model.config, 1, torch.device("cpu"), torch.float32)
    cache.length = model.config.context_window
    return cache


@needs_compiler
def test_weights_are_inputs_another_model_of_the_configuration_reuses_the_compiled_step():
    options = MODELS["rope + qk-norm, sigmoid gate, bias balancing"]
    first, second = model_with(options, seed=0), model_with(options, seed=1)
    backend = compiled._compiled_step()
    assert_steps_match_the_cached_forward(first, CompiledDecoder(first))  # compiled here, or by an earlier test
    torch._dynamo.utils.counters.clear()
    assert_steps_match_the_cached_forward(second, CompiledDecoder(second))  # other weights, the same code
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0 and backend is compiled._compiled_step()


@needs_compiler
@pytest.mark.parametrize("window", ["slide", "crop"])
def test_generation_with_the_compiled_step_writes_the_same_tokens(window):
    model = model_with(MODELS["rope + qk-norm, sigmoid gate, bias balancing"])
    prompt = torch.randint(0, 256, (1, 3), generator=torch.Generator().manual_seed(3))
    eager = generate(model, prompt, 40, temperature=0.0, window=window)  # 40 past a window of 12
    assert torch.equal(generate(model, prompt, 40, temperature=0.0, window=window, compile_step=True), eager)
    sampled = {"temperature": 0.9, "top_k": 40, "seed": 5, "window": window}
    assert torch.equal(generate(model, prompt, 40, compile_step=True, **sampled), generate(model, prompt, 40, **sampled))


def without_a_compiler(monkeypatch) -> None:
    """Make every compiled step fail as Inductor does without a C++ compiler (a fresh process: no failure yet)."""

    def no_compiler():
        def step(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return step

    monkeypatch.setattr(compiled, "_compiled_step", no_compiler)
    monkeypatch.setattr(compiled, "_compile_failure", None)


def test_where_compiling_fails_it_warns_once_and_steps_uncompiled(monkeypatch):
    without_a_compiler(monkeypatch)
    uncompiled = []
    step = TokenDecoder.__call__
    monkeypatch.setattr(TokenDecoder, "__call__", lambda self, *a, **k: uncompiled.append(1) or step(self, *a, **k))
    model = model_with(MODELS["dense"])
    prompt = torch.randint(0, 256, (1, 3), generator=torch.Generator().manual_seed(4))
    with pytest.warns(RuntimeWarning, match="could not compile the one-token step.*C\\+\\+ compiler"):
        tokens = generate(model, prompt, 20, temperature=0.0, compile_step=True)
    assert not CompiledDecoder.available() and len(uncompiled) > 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile could not compile")  # once per process
        assert torch.equal(generate(model, prompt, 20, temperature=0.0, compile_step=True), tokens)
    assert torch.equal(tokens, generate(model, prompt, 20, temperature=0.0, use_cache=False))


def test_break_even_is_compile_time_over_the_time_saved_per_token():
    # 1 ms a token uncompiled, 0.5 ms compiled: 10 s of compiling pays back after 20,000 tokens
    assert break_even_tokens(10.0, 2000.0, 1000.0) == pytest.approx(20_000)
    assert break_even_tokens(10.0, 900.0, 1000.0) == float("inf")  # never, when compiled is slower
