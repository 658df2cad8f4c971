import math

import pytest

from moelab import ModelConfig, TrainConfig
from moelab.train.schedule import Budget, LRSchedule, WindowSchedule


def test_window_grows_by_step_over_the_warmup_fraction():
    ws = WindowSchedule(start=8, maximum=32, step=8, warmup_fraction=0.4)
    assert ws.windows == [8, 16, 24, 32]
    # stage i starts at progress i/3 * 0.4
    expected = {0.0: 8, 0.13: 8, 0.134: 16, 0.26: 16, 0.267: 24, 0.399: 24, 0.4: 32, 0.9: 32, 1.0: 32}
    assert {p: ws.window(p) for p in expected} == expected


def test_uneven_step_is_capped_at_the_maximum():
    assert WindowSchedule(start=16, maximum=40, step=16, warmup_fraction=0.5).windows == [16, 32, 40]


def test_fixed_window_is_the_same_object():
    assert all(WindowSchedule(32, 32, 8, 0.3).window(p / 10) == 32 for p in range(11))
    assert all(WindowSchedule(8, 32, 8, 0.0).window(p / 10) == 32 for p in range(11))


def test_batch_keeps_sequences_or_tokens():
    ws = WindowSchedule(8, 32, 8, 0.3)
    assert ws.batch_sequences(8, 16, "sequences") == 16
    assert ws.batch_sequences(8, 16, "tokens") == 64  # 16 × 32 tokens as 64 sequences of 8
    assert ws.batch_sequences(32, 16, "tokens") == 16


def test_schedule_from_configs_checks_the_model_window():
    model = ModelConfig(context_window=32, n_embd=32, n_heads=2)
    ws = WindowSchedule.from_configs(model, TrainConfig(current_context_window=8, context_window_step=8))
    assert ws.windows == [8, 16, 24, 32]
    with pytest.raises(ValueError, match="current_context_window"):
        WindowSchedule.from_configs(model, TrainConfig(current_context_window=64))


def test_lr_warmup_then_cosine():
    lr = LRSchedule(lr=1e-3, warmup_steps=10, min_ratio=0.1)
    assert lr(0, 0.0) == pytest.approx(1e-4)
    assert lr(9, 0.0) == pytest.approx(1e-3)
    assert lr(50, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr(100, 1.0) == pytest.approx(1e-4)
    values = [lr(s, s / 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decays monotonically after warmup


def test_budget_by_steps_minutes_or_both():
    assert Budget(100, None).progress(25, 1e9) == 0.25
    assert Budget(None, 2.0).progress(10**6, 60.0) == 0.5
    both = Budget(100, 1.0)
    assert both.progress(10, 45.0) == 0.75 and not both.done(10, 45.0)
    assert both.done(100, 1.0) and both.done(1, 60.0)
    assert math.isclose(Budget(3, None).progress(1, 0), 1 / 3)
    tokens = Budget(None, None, max_tokens=1000)
    assert tokens.progress(7, 1e9, 250) == 0.25 and not tokens.done(10**6, 1e9, 999) and tokens.done(1, 0.0, 1000)
    assert Budget(100, None, 1000).progress(10, 0.0, 500) == 0.5  # the first budget reached counts
    with pytest.raises(ValueError, match="budget"):
        TrainConfig(max_steps=None, max_minutes=None)
    with pytest.raises(ValueError, match="max_tokens"):
        TrainConfig(max_steps=None, max_tokens=0)
