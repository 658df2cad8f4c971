import pytest

from moelab import ModelConfig, TrainConfig, preset
from moelab.config.train import config_diff
from moelab.config.presets import DEFAULT_DATASET, PRESETS, presets_table


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"n_embd": 130, "n_heads": 4}, "n_embd: must be divisible by n_heads=4"),
        ({"top_k": 9, "n_experts": 8}, r"top_k: must be an integer in 1\.\.n_experts=8"),
        ({"top_k": 0}, "top_k"),
        ({"n_layers": 0}, "n_layers: must be a positive integer"),
        ({"n_heads": -2}, "n_heads"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"context_window": 0}, "context_window"),
        ({"pos_encoding": "alibi"}, "pos_encoding: must be one of learned, sinusoidal, rope"),
        ({"pos_encoding": "rope", "n_embd": 12, "n_heads": 4}, "even head size"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_experts": -1}, "n_experts"),
        ({"n_experts": 0, "n_common_experts": 0}, "n_common_experts: must be >= 1 when n_experts=0"),
        ({"capacity_factor": 0}, "capacity_factor"),
        ({"aux_loss_coef": -0.1}, "aux_loss_coef"),
        ({"balance": "foo"}, "balance: must be one of aux_loss, bias, none; got 'foo'"),
        ({"gate": "relu"}, "gate: must be one of softmax, sigmoid; got 'relu'"),
        ({"expert_granularity": 0}, "expert_granularity: must be a positive integer, got 0"),
        ({"expert_granularity": 2.0}, "expert_granularity: must be an integer"),
        ({"bias_update_rate": -1e-3}, "bias_update_rate: must be >= 0, got -0.001"),
        ({"expert_hidden": 30, "expert_granularity": 4}, r"expert_granularity: must divide expert_hidden=30 .* got 4"),
    ],
)
def test_invalid_model_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_num_embeds_is_an_alias_of_n_embd():
    assert ModelConfig(num_embeds=64, n_heads=4).n_embd == 64
    assert ModelConfig(num_embeds=64, n_embd=64, n_heads=4).n_embd == 64
    with pytest.raises(ValueError, match="num_embeds"):
        ModelConfig(num_embeds=64, n_embd=96)
    assert ModelConfig.from_dict({"num_embeds": 256}).n_embd == 256


def test_round_trip_through_dict_and_unknown_fields():
    config = ModelConfig(n_embd=64, n_heads=4, capacity_factor=1.25, pos_encoding="rope")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig field.*n_embed"):
        ModelConfig.from_dict({"n_embed": 64})
    train = TrainConfig(lr=3e-4, betas=[0.9, 0.99])
    assert TrainConfig.from_dict(train.to_dict()) == train


def test_routing_fields_default_to_the_previous_routing_and_give_the_routed_counts():
    new_fields = ("gate", "balance", "bias_update_rate", "expert_granularity")
    before = {k: v for k, v in ModelConfig().to_dict().items() if k not in new_fields}
    config = ModelConfig.from_dict(before)  # a config.json or checkpoint written before these fields
    assert [getattr(config, name) for name in new_fields] == ["softmax", "aux_loss", 1e-3, 1]
    fine = ModelConfig(n_experts=8, top_k=2, expert_hidden=256, expert_granularity=4)
    assert (fine.routed_experts, fine.routed_top_k, fine.routed_hidden) == (32, 8, 64)
    assert ModelConfig(n_experts=0, n_common_experts=1, expert_granularity=4).routed_top_k == 0
    assert fine.aux_loss_weight == 0.01 and fine.replace(balance="bias").aux_loss_weight == 0.0


def test_expert_hidden_defaults_to_four_times_n_embd():
    assert ModelConfig(n_embd=64, n_heads=4).expert_hidden == 256
    assert ModelConfig(n_embd=64, n_heads=4, expert_hidden=100).expert_hidden == 100


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lr": 0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_keep": "bytes"}, "batch_keep: must be one of sequences, tokens"),
        ({"window_warmup_fraction": 1.5}, "window_warmup_fraction"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
    ],
)
def test_invalid_train_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**changes)


def test_window_schedule_must_fit_the_model():
    p = preset("tiny")
    p.train.check_against(p.model)
    with pytest.raises(ValueError, match="current_context_window"):
        p.train.replace(current_context_window=p.model.context_window + 1).check_against(p.model)


def test_presets_are_fresh_copies_and_unknown_names_are_explained():
    a = preset("cpu")
    a.model.n_layers = 99
    assert preset("cpu").model.n_layers != 99
    with pytest.raises(ValueError, match="seed, cpu, long, tiny"):
        preset("huge")


def test_presets_table():
    table = presets_table()
    assert list(table.index) == ["seed", "cpu", "long", "tiny"]
    assert (table["params_active"] < table["params_total"]).all()
    for name in table.index:
        p = preset(name)
        p.train.check_against(p.model)


def _presets_at_6f3e1e7():
    """The presets as config.py wrote them before they became data (commit 6f3e1e7), verbatim."""
    return {
        "seed": (
            ModelConfig(vocab_size=256, n_layers=6, n_heads=4, n_embd=1028, context_window=32, n_experts=8, top_k=2,
                        n_common_experts=2, pos_encoding="learned", dropout=0.1),
            TrainConfig(max_steps=2000, batch_size=64, lr=1e-4, current_context_window=8, context_window_step=8),
        ),
        "cpu": (
            ModelConfig(n_layers=4, n_heads=4, n_embd=128, context_window=64, n_experts=8, top_k=2, n_common_experts=1,
                        expert_hidden=256, pos_encoding="rope"),
            TrainConfig(max_steps=None, max_minutes=10.0, batch_size=32, lr=2e-3, current_context_window=16,
                        context_window_step=16, batch_keep="tokens"),
        ),
        "long": (
            ModelConfig(n_layers=4, n_heads=6, n_embd=192, context_window=64, n_experts=8, top_k=2, n_common_experts=1,
                        expert_hidden=384, pos_encoding="rope"),
            TrainConfig(max_steps=None, max_minutes=60.0, batch_size=32, lr=2e-3, current_context_window=16,
                        context_window_step=16, batch_keep="tokens", eval_every=250, checkpoint_every=500),
        ),
        "tiny": (
            ModelConfig(n_layers=2, n_heads=2, n_embd=32, context_window=16, n_experts=4, top_k=2, n_common_experts=1,
                        expert_hidden=64),
            TrainConfig(max_steps=20, batch_size=8, lr=3e-3, warmup_steps=2, current_context_window=8,
                        context_window_step=4, eval_every=10, eval_windows=8, checkpoint_every=10, log_every=2,
                        precision="fp32"),
        ),
    }


# issue 16: the design-lr study, then the 10-minute (cpu) and 60-minute (long) runs re-measured
ADOPTED_SINCE = {"cpu": {"optimizer": "muon", "lr": 8e-3}, "long": {"optimizer": "muon", "lr": 8e-3}}
ADOPTED_MODEL_SINCE = {"cpu": {"vocab_size": 2048}}  # with its dataset, machado-bpe2048


def test_presets_keep_their_values():
    old = _presets_at_6f3e1e7()
    assert list(PRESETS) == list(old)
    for name, (model, train) in old.items():
        train = TrainConfig.from_dict({**train.to_dict(), **ADOPTED_SINCE.get(name, {})})
        model = model.replace(**ADOPTED_MODEL_SINCE.get(name, {}))
        p = preset(name)
        assert p.model == model and p.train == train, name
        assert config_diff(p.model, model) == {} and config_diff(p.train, train) == {}, name


def test_preset_table_holds_only_values_that_differ_from_the_defaults():
    defaults = {"model": ModelConfig().to_dict(), "train": TrainConfig().to_dict()}
    for name, entry in PRESETS.items():
        assert {"description", "model", "train"} <= set(entry) <= {"description", "model", "train", "dataset"}, name
        assert entry["description"] and entry.get("dataset") != DEFAULT_DATASET, name
        for kind in ("model", "train"):
            for field, value in entry[kind].items():
                assert field in defaults[kind], (name, field)
                default = defaults[kind][field]
                if field == "expert_hidden":  # its default is derived: 4 * n_embd
                    default = 4 * entry["model"].get("n_embd", defaults["model"]["n_embd"])
                assert value != default, f"{name}.{kind}.{field} repeats the default {value!r}"


def test_a_preset_names_its_dataset_and_the_train_command_sweeps_and_notebook_02_default_to_it(tmp_path, monkeypatch, capsys):
    from moelab.sweep.spec import load_spec
    from moelab.train.cli import main
    from moelab.views.notebook import notebook_settings

    assert {name: preset(name).dataset for name in PRESETS} == {**dict.fromkeys(PRESETS, DEFAULT_DATASET), "cpu": "machado-bpe2048"}
    spec = {"name": "s", "base": {"preset": "cpu", "max_steps": 1}, "seeds": [1], "variants": {"a": {}}}
    assert load_spec(spec, check_dataset=False).dataset == "machado-bpe2048"
    assert load_spec({**spec, "base": {"preset": "cpu", "dataset": "other", "max_steps": 1}}, check_dataset=False).dataset == "other"
    names = ("preset", "run_name", "dataset", "max_minutes", "max_steps", "compare_tokens", "compare_steps", "compare_minutes")
    settings = notebook_settings("02_train", "default", **dict.fromkeys(names))
    assert settings["dataset"] == "machado-bpe2048"
    assert notebook_settings("02_train", "default", **{**dict.fromkeys(names), "preset": "long"})["dataset"] == DEFAULT_DATASET
    monkeypatch.setenv("MOELAB_DATA_DIR", str(tmp_path))  # nothing prepared: the error names the dataset it looked for
    assert main(["--preset", "cpu", "--run-name", "x", "--no-progress"]) == 2
    assert "machado-bpe2048" in capsys.readouterr().err
