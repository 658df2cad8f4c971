import math

import numpy as np
import pandas as pd
import pytest
import torch

from moelab import ModelConfig, Transformer
from moelab.data import SEPARATOR
from moelab.views.analysis import (
    Routing,
    balance_stats,
    byte_class,
    category_windows,
    coactivation,
    collect_routing,
    evenly_spaced_windows,
    expert_legend,
    expert_load_table,
    expert_palette,
    routing_html,
    specialization,
    token_class,
    token_classes,
)
from moelab.data.tokenizer import BPETokenizer
from tests.conftest import SENTENCES


def make_routing(experts, probs=None, n_experts=4, tokens=None, weights=None):
    experts = np.asarray(experts)  # (L, T, k)
    L, T, k = experts.shape
    if probs is None:
        probs = np.full((L, T, n_experts), 1.0 / n_experts)
    if weights is None:
        weights = np.full((L, T, k), 1.0 / k)
    return Routing(
        tokens=np.asarray(tokens if tokens is not None else np.zeros(T), dtype=np.int64),
        experts=experts,
        weights=np.asarray(weights),
        probs=np.asarray(probs),
        dropped=np.zeros_like(experts, dtype=bool),
    )


def test_expert_load_matches_a_slow_count():
    rng = np.random.default_rng(0)
    experts = rng.integers(0, 4, size=(2, 50, 2))
    load = expert_load_table(make_routing(experts))
    for layer in range(2):
        for e in range(4):
            slow = sum(1 for t in range(50) for j in range(2) if experts[layer, t, j] == e) / 100
            assert load.loc[layer, e] == pytest.approx(slow)


def test_uniform_random_router_is_balanced_and_maximally_uncertain():
    rng = np.random.default_rng(1)
    n, tokens = 8, 40_000
    experts = np.stack([rng.permutation(n)[:2] for _ in range(tokens)])[None]
    probs = np.full((1, tokens, n), 1 / n)
    stats = balance_stats(make_routing(experts, probs, n_experts=n)).loc[0]
    assert stats["load_cv"] < 0.03 and stats["min_max_ratio"] > 0.9
    assert stats["token_entropy"] == pytest.approx(math.log(n)) and stats["mean_entropy"] == pytest.approx(math.log(n))


def test_collapsed_router_is_flagged():
    tokens, n = 100, 4
    probs = np.zeros((1, tokens, n))
    probs[..., 0] = 1.0
    weights = np.ones((1, tokens, 1))
    stats = balance_stats(make_routing(np.zeros((1, tokens, 1), dtype=int), probs, weights=weights)).loc[0]
    assert stats["min_max_ratio"] == 0 and stats["load_cv"] == pytest.approx(math.sqrt(3))  # loads (1, 0, 0, 0)
    assert stats["maxvio"] == pytest.approx(3.0)  # (1 - 1/4) / (1/4)
    assert stats["token_entropy"] == 0 and stats["top1_over_0_9"] == 1.0


def test_coactivation_counts_pairs():
    experts = np.array([[[0, 1], [0, 1], [2, 3], [1, 2]]])
    matrix = coactivation(make_routing(experts), 0)
    assert matrix.loc[0, 1] == matrix.loc[1, 0] == 0.5
    assert matrix.loc[1, 2] == 0.25 and matrix.loc[0, 3] == 0
    assert matrix.loc[1, 1] == 0.75  # diagonal: share of tokens choosing expert 1


def test_byte_and_token_classes():
    assert [byte_class(b) for b in b"aZ9 \n,"] == ["lowercase", "uppercase", "digit", "space", "newline", "punctuation"]
    assert {byte_class(b) for b in "é—".encode()} == {"multi-byte (UTF-8)"}
    assert byte_class(0) == "other"
    routing = make_routing(np.zeros((1, 3, 1), dtype=int), tokens=list(b"aA."))
    assert list(token_classes(routing)) == ["lowercase", "uppercase", "punctuation"]
    # a token of several bytes: its first character after a leading space
    pieces = [" casa", "Capitu", " ção", "1899", "  ", "\n\n", "—,", " \n"]
    assert [token_class(p.encode()) for p in pieces] == [
        "lowercase", "uppercase", "multi-byte (UTF-8)", "digit", "space", "newline", "multi-byte (UTF-8)", "newline"]
    bpe = BPETokenizer.train(SENTENCES * 20, 300)
    ids = [bpe.pieces.index(piece) for piece in (b" olh", b"C", "ão".encode(), b" \xc3", b".")]  # merges of SENTENCES
    routing = make_routing(np.zeros((1, len(ids), 1), dtype=int), tokens=ids)
    assert list(token_classes(routing, bpe)) == ["lowercase", "uppercase", "multi-byte (UTF-8)", "multi-byte (UTF-8)", "punctuation"]
    with pytest.raises(ValueError, match="past the tokenizer's 256.*own tokenizer"):
        token_classes(routing)  # BPE ids read as bytes


def test_specialization_is_flat_without_dependence_and_shows_a_preference():
    rng = np.random.default_rng(2)
    tokens = 20_000
    labels = rng.choice(["conto", "poesia"], size=tokens)
    independent = make_routing(rng.integers(0, 4, size=(1, tokens, 1)))
    lift = specialization(independent, labels, 0)
    assert np.allclose(lift.to_numpy(), 1.0, atol=0.06)
    # poetry always goes to expert 3, prose uniformly over 0..3
    experts = np.where(labels == "poesia", 3, rng.integers(0, 4, size=tokens))[None, :, None]
    lift = specialization(make_routing(experts), labels, 0)
    p3 = (experts == 3).mean()
    assert lift.loc["poesia", 3] == pytest.approx(1 / p3)
    assert lift.loc["poesia", 0] == 0 and list(lift.columns) == [0, 1, 2, 3]


def small_moe():
    torch.manual_seed(0)
    config = ModelConfig(n_layers=2, n_heads=2, n_embd=16, context_window=12, n_experts=4, top_k=2, expert_hidden=16)
    return Transformer(config).eval()


def test_collect_routing_matches_the_model():
    model = small_moe()
    windows = np.random.default_rng(3).integers(0, 256, size=(5, 12), dtype=np.uint8)
    routing = collect_routing(model, windows, labels=np.array(list("abcde")), batch_size=2)
    assert routing.experts.shape == (2, 60, 2) and routing.probs.shape == (2, 60, 4)
    direct = model(torch.from_numpy(windows).long(), record_routing=True).routing
    assert np.array_equal(routing.experts[1], direct[1].experts.reshape(60, 2).numpy())
    assert list(routing.labels[:13]) == ["a"] * 12 + ["b"]
    assert np.array_equal(routing.tokens, windows.ravel())
    with pytest.raises(ValueError, match="dense"):
        collect_routing(Transformer(model.config.dense_equivalent()), windows)
    with pytest.raises(ValueError, match="ids up to 299, but the model has 256 tokens.*own tokenizer"):
        collect_routing(model, np.full((1, 4), 299))


def test_windows_helpers():
    data = np.arange(100, dtype=np.uint8)
    windows = evenly_spaced_windows(data, 10, 4)
    assert windows.shape == (4, 10) and windows[0, 0] == 0 and windows[-1, -1] == 99
    texts = pd.Series({("conto", "a"): "x" * 50, ("poesia", "b"): "y" * 30, ("teatro", "c"): "z"},
                      name="text").rename_axis(["category", "work"])
    windows, labels = category_windows(texts, 10, 3)
    assert list(labels) == ["conto"] * 3 + ["poesia"] * 3  # teatro is shorter than one window
    assert bytes(windows[3]) == b"y" * 10
    two_works = pd.Series({("conto", "a"): "x" * 6, ("conto", "b"): "y" * 6}, name="text").rename_axis(["category", "work"])
    windows, _ = category_windows(two_works, 12 + len(SEPARATOR), 1)
    assert bytes(windows[0]) == ("x" * 6 + SEPARATOR + "y" * 6).encode()  # works joined as in the split files


def test_routing_html_colors_every_character_and_escapes():
    html_text = routing_html("a <b> é\nfim", small_moe(), layer=1, title="passo")
    assert html_text.count('<span title="expert') == len("a <b> é\nfim")
    assert "&lt;" in html_text and "&gt;" in html_text and "<b>" not in html_text
    assert "layer 1" in html_text and "expert 3" in html_text
    assert expert_legend(expert_palette(4), 4) in html_text  # the legend the sampler widget shows too
    fine = Transformer(small_moe().config.replace(expert_granularity=4))  # 16 routed experts
    assert expert_legend(expert_palette(16), 16) in routing_html("abc", fine, layer=0)


def test_routing_views_of_a_bpe_model_color_whole_tokens_and_never_cut_a_character():
    import html as html_lib
    import re

    bpe = BPETokenizer.train(SENTENCES * 20, 300)
    torch.manual_seed(0)
    model = Transformer(small_moe().config.replace(vocab_size=300)).eval()

    def spans_of(view):
        spans = re.findall(r'<span title="expert (\d+)"[^>]*>(.*?)</span>', view)
        return [int(e) for e, _ in spans], [html_lib.unescape(body.replace("⏎<br>", "\n")) for _, body in spans]

    accented = "Não é? — disse ela, ação e coração.\n" * 3
    assert "".join(spans_of(routing_html(accented, model, layer=1, tokenizer=bpe))[1]) == accented  # no character cut
    text = "Capitu tinha olhos de ressaca. Ao vencedor, as batatas!\n" * 2  # ASCII: every token whole characters
    ids = bpe.encode(text)
    view = routing_html(text, model, layer=1, tokenizer=bpe)
    experts, shown = spans_of(view)
    assert shown == [bpe.pieces[i].decode() for i in ids]  # one span per token
    # each span's color is that token's top-1 expert, routed in chunks of the context window
    window = model.config.context_window
    expected = [int(e) for s in range(0, len(ids), window)
                for e in collect_routing(model, np.array([ids[s : s + window]])).experts[1][:, 0]]
    assert experts == expected
    assert "each token in layer 1" in view
    with pytest.raises(ValueError, match="300 tokens, the tokenizer 256"):
        routing_html(text, model, layer=1)
    # genre windows are windows of tokens
    texts = pd.Series({("conto", "a"): text * 3, ("poesia", "b"): text * 3}, name="text").rename_axis(["category", "work"])
    windows, labels = category_windows(texts, 8, 2, tokenizer=bpe)
    assert windows.shape == (4, 8) and windows.max() >= 256
    assert list(windows[0]) == bpe.encode(text * 3)[:8]
