import math

import pandas as pd
import pytest
import torch

from moelab import ModelConfig, TrainConfig, Transformer, load_model
from moelab.data.batches import WindowSampler
from moelab.nn.model import decay_groups
from moelab.train.optim import load_optimizer_state, make_optimizer
from moelab.config.presets import build_configs, preset
from moelab.runs.files import latest_checkpoint
from moelab.train.cli import main, parse_value
from moelab.train.trainer import Trainer, TrainingDiverged


def tiny(**train_changes):
    p = preset("tiny")
    return p.model, p.train.replace(**train_changes)


def test_batches_follow_the_window_schedule_exactly(toy_dataset, monkeypatch):
    model, train = tiny(max_steps=24, batch_keep="tokens", current_context_window=4, context_window_step=4, window_warmup_fraction=0.5)
    shapes = []
    original = WindowSampler.batch

    def spy(self, sequences, window):
        x, y = original(self, sequences, window)
        shapes.append(tuple(x.shape))
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        return x, y

    monkeypatch.setattr(WindowSampler, "batch", spy)
    Trainer(model, train, "shapes", dataset=toy_dataset, progress=False).fit()
    # independent reference: windows 4, 8, 12, 16 over the first half of 24 steps; batch of 8 × 16 tokens
    expected = []
    for step in range(24):
        stage = min(int(step / 24 / 0.5 * 3), 3)
        window = [4, 8, 12, 16][stage]
        expected.append((8 * 16 // window, window))
    assert shapes == expected


def test_same_seed_gives_identical_losses_and_another_seed_differs(toy_dataset):
    model, train = tiny(max_steps=12, log_every=1)
    a = Trainer(model, train, "det-a", dataset=toy_dataset, progress=False).fit().metrics
    b = Trainer(model, train, "det-b", dataset=toy_dataset, progress=False).fit().metrics
    c = Trainer(model, train.replace(seed=7), "det-c", dataset=toy_dataset, progress=False).fit().metrics
    assert a["loss"].tolist() == b["loss"].tolist()
    assert a["loss"].tolist() != c["loss"].tolist()


def test_token_budget_ends_at_the_first_step_reaching_it(toy_dataset):
    # sequences mode: short windows early make early steps cheaper, so the step count follows the tokens
    model, train = tiny(max_steps=None, max_tokens=1000, batch_keep="sequences", log_every=1)
    result = Trainer(model, train, "token-budget", dataset=toy_dataset, progress=False).fit()
    per_step = result.metrics["batch_sequences"] * result.metrics["window"]
    assert result.tokens == per_step.sum() >= 1000 and result.tokens - per_step.iloc[-1] < 1000
    assert result.metrics["progress"].iloc[-1] == 1.0


def test_metrics_checkpoints_and_routing_snapshots(toy_dataset):
    model, train = tiny(max_steps=20)
    trainer = Trainer(model, train, "files", dataset=toy_dataset, progress=False)
    result = trainer.fit()
    metrics = pd.read_parquet(trainer.reports / "metrics.parquet")
    assert metrics["step"].tolist() == list(range(2, 21, 2))
    assert {"tokens", "window", "lr", "loss", "ce_loss", "aux_loss", "z_loss", "val_bpb", "tokens_per_s"} <= set(metrics.columns)
    loads = metrics.filter(regex=r"^load_l0_e\d$")
    assert loads.shape[1] == 4 and loads.sum(axis=1).round(6).eq(1).all()
    mean = loads.mean(axis=1)  # the layer's balance, by hand from its load columns
    pd.testing.assert_series_equal(metrics["load_cv_l0"], loads.std(axis=1, ddof=0) / mean, check_names=False)
    pd.testing.assert_series_equal(metrics["maxvio_l0"], (loads.max(axis=1) - mean) / mean, check_names=False)
    evaluated = metrics.dropna(subset=["val_bpb"])
    assert evaluated["step"].tolist() == [10, 20]
    assert math.isclose(evaluated["val_bpb"].iloc[-1], result.val_bpb)
    assert evaluated["val_bpb"].iloc[-1] == pytest.approx(evaluated["val_loss"].iloc[-1] / math.log(2))
    routing = pd.read_parquet(trainer.reports / "routing.parquet")
    assert set(routing["step"]) == {10, 20} and routing.groupby(["step", "layer"])["load"].sum().round(6).eq(1).all()
    layer = routing.groupby(["step", "layer"])["load"]
    pd.testing.assert_series_equal(routing.groupby(["step", "layer"])["maxvio"].first(), layer.max() / layer.mean() - 1,
                                   check_names=False)  # fmt: skip
    # the final checkpoint rebuilds the trained model
    assert result.checkpoint == latest_checkpoint("files")
    reloaded = load_model(result.checkpoint)
    x = torch.randint(0, 256, (2, 16))
    assert torch.equal(reloaded(x).logits, trainer.model.eval()(x).logits)
    # a finished run is not silently overwritten
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(model, train, "files", dataset=toy_dataset, progress=False).fit()


def test_resume_continues_exactly(toy_dataset):
    model, train = tiny(max_steps=20, log_every=1, checkpoint_every=5)
    full = Trainer(model, train, "straight", dataset=toy_dataset, progress=False).fit().metrics

    class Stop(Exception):
        pass

    def stop_after_checkpoint(row):
        if row["step"] == 13:
            raise Stop

    with pytest.raises(Stop):
        Trainer(model, train, "interrupted", dataset=toy_dataset, progress=False, callbacks=[stop_after_checkpoint]).fit()
    resumed = Trainer(model, train, "interrupted", dataset=toy_dataset, progress=False).fit(resume=True).metrics
    assert resumed["step"].tolist() == list(range(1, 21))  # rows 11-13 lost with the crash are redone once
    for column in ("loss", "window", "lr", "tokens"):
        assert resumed[column].tolist() == full[column].tolist(), column


def test_the_balance_biases_move_by_the_loads_of_all_micro_batches(toy_dataset, monkeypatch):
    from moelab.nn.moe.layer import MoE
    from moelab.nn.moe.router import Router

    model, train = tiny(max_steps=2, grad_accum_steps=2)
    forwards, updates = [], []  # (layer id, slots) per training forward; (layer id, slots, bias before, after)
    forward, update = MoE.forward, Router.update_balance_bias

    def counting_forward(self, x, **kwargs):
        y, router = forward(self, x, **kwargs)
        if self.training:
            forwards.append((id(self.router), torch.bincount(router.experts.flatten(), minlength=self.n_experts)))
        return y, router

    def recording_update(self, slots):
        before = self.balance_bias.clone()
        update(self, slots)
        updates.append((id(self), slots.clone(), before, self.balance_bias.clone()))

    monkeypatch.setattr(MoE, "forward", counting_forward)
    monkeypatch.setattr(Router, "update_balance_bias", recording_update)
    biased = model.replace(balance="bias", bias_update_rate=0.01)
    Trainer(biased, train, "bias-micro", dataset=toy_dataset, progress=False).fit()
    assert len(forwards) == 2 * 2 * 2 and len(updates) == 2 * 2  # steps × micro-batches × layers; steps × layers
    for step in range(2):
        for layer, slots, before, after in updates[2 * step : 2 * step + 2]:
            micro = [counts for owner, counts in forwards[4 * step : 4 * step + 4] if owner == layer]
            assert len(micro) == 2 and torch.equal(slots, micro[0] + micro[1])
            torch.testing.assert_close(after - before, 0.01 * torch.sign(slots.double().mean() - slots).float())
    assert any(not torch.equal(after, before) for _, _, before, after in updates)


def test_resume_restores_the_balance_biases(toy_dataset):
    model, train = tiny(max_steps=8, log_every=1, checkpoint_every=4)
    model = model.replace(balance="bias", gate="sigmoid", bias_update_rate=0.02)
    straight = Trainer(model, train, "bias-straight", dataset=toy_dataset, progress=False)
    full = straight.fit().metrics
    Trainer(model, train, "bias-resumed", dataset=toy_dataset, progress=False).fit(stop_after_steps=4)
    resumed = Trainer(model, train, "bias-resumed", dataset=toy_dataset, progress=False)
    assert resumed.fit(resume=True).metrics["loss"].tolist() == full["loss"].tolist()
    for a, b in zip(straight.model.blocks, resumed.model.blocks):
        assert torch.equal(a.moe.router.balance_bias, b.moe.router.balance_bias) and a.moe.router.balance_bias.abs().sum() > 0


def test_sweeps_and_overrides_drive_the_routing_fields(toy_dataset):
    overrides = {"balance": "bias", "gate": "sigmoid", "expert_granularity": 4, "max_steps": 3, "max_minutes": None,
                 "batch_size": 4, "log_every": 1, "eval_every": 3, "eval_windows": 4, "precision": "fp32",
                 "vocab_size": 256}  # the cpu preset's model on the toy dataset's bytes
    model, train = build_configs("cpu", overrides)
    trainer = Trainer(model, train, "routing-fields", dataset=toy_dataset, progress=False)
    metrics = trainer.fit().metrics
    assert model.routed_experts == 32 and {"load_l0_e31", "load_cv_l3", "maxvio_l3"} <= set(metrics.columns)
    assert metrics["loss"].map(math.isfinite).all() and trainer.model.blocks[0].moe.router.balance_bias.abs().sum() > 0


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(toy_dataset, monkeypatch):
    model, train = tiny(max_steps=20, checkpoint_every=5)
    original = Transformer.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 8 and out.loss is not None:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 8 .*ckpt_0000005\.pt"):
        Trainer(model, train, "diverged", dataset=toy_dataset, progress=False).fit()
    assert latest_checkpoint("diverged").name == "ckpt_0000005.pt"
    load_model(latest_checkpoint("diverged"))


def test_weight_decay_groups():
    """Every matrix decays, embeddings included (nanoGPT's rule); vectors and the router-noise weights do not."""
    config = ModelConfig(n_layers=1, n_heads=2, n_embd=16, context_window=8, n_experts=4, top_k=2,
                         n_common_experts=1, bias=True, router_noise=True, tie_weights=True)
    decay, keep = decay_groups(Transformer(config))
    assert [n for n, _ in decay] == [
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.moe.common.fc.weight",
        "blocks.0.moe.common.proj.weight",
        "blocks.0.moe.router.gate.weight",
        "blocks.0.moe.experts.w1",
        "blocks.0.moe.experts.w2",
    ]
    assert [n for n, _ in keep] == [
        "blocks.0.ln1.weight",
        "blocks.0.ln1.bias",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.bias",
        "blocks.0.ln2.weight",
        "blocks.0.ln2.bias",
        "blocks.0.moe.common.fc.bias",
        "blocks.0.moe.common.proj.bias",
        "blocks.0.moe.router.noise.weight",
        "blocks.0.moe.experts.b1",
        "blocks.0.moe.experts.b2",
        "ln_f.weight",
        "ln_f.bias",
        "head.bias",
    ]
    model = Transformer(preset("tiny").model)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, kept = optimizer.param_groups
    assert (decayed["weight_decay"], kept["weight_decay"]) == (0.1, 0.0)
    assert [p for _, p in decay_groups(model)[0]] == decayed["params"]
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))


def test_optimizer_state_of_the_previous_decay_rule_is_moved_to_the_same_parameters():
    """A checkpoint from before the router-noise weights left the decay group resumes with every moment in place."""
    torch.manual_seed(0)
    model = Transformer(preset("tiny").model)

    def old_rule_no_decay(name):  # the previous version's name-based rule, written out
        return name.endswith(("bias", ".b1", ".b2")) or ".ln" in f".{name}" or name.startswith("ln_f")

    named = list(model.named_parameters())
    old = torch.optim.AdamW(
        [{"params": [p for n, p in named if not old_rule_no_decay(n)], "weight_decay": 0.1},
         {"params": [p for n, p in named if old_rule_no_decay(n)], "weight_decay": 0.0}], lr=1e-3
    )
    model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))).loss.backward()
    old.step()
    expected = {n: old.state[p]["exp_avg"].clone() for n, p in named}
    new = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    with pytest.raises(ValueError):  # the groups differ in size: a plain load refuses it
        new.load_state_dict(old.state_dict())
    load_optimizer_state(new, model, old.state_dict())
    for n, p in named:
        assert torch.equal(new.state[p]["exp_avg"], expected[n]), n
    assert [g["weight_decay"] for g in new.param_groups] == [0.1, 0.0]


def test_command_line(toy_dataset, capsys):
    code = main(["--preset", "tiny", "--run-name", "cli", "--dataset", toy_dataset, "--no-progress",
                 "--set", "max_steps=6", "--set", "learning_rate=1e-3", "--set", "n_layers=1"])
    out = capsys.readouterr().out
    assert code == 0 and "cli: 6 steps" in out and "bits/byte" in out
    assert load_model(latest_checkpoint("cli")).config.n_layers == 1
    assert main(["--preset", "tiny", "--run-name", "cli2", "--dataset", toy_dataset, "--set", "n_layer=3"]) == 2
    assert "unknown field(s) n_layer" in capsys.readouterr().err


def test_config_overrides_and_values():
    model, train = build_configs("tiny", {"lr": 5e-4, "max_minutes": 1.5, "top_k": 1, "num_embeds": 64})
    assert (train.lr, train.max_minutes, model.top_k, model.n_embd) == (5e-4, 1.5, 1, 64)
    assert [parse_value(v) for v in ("3", "1e-3", "true", "null", "[1, 2]", "rope")] == [3, 1e-3, True, None, [1, 2], "rope"]
    with pytest.raises(ValueError, match="current_context_window"):
        build_configs("tiny", {"context_window": 4})


def test_precision_is_resolved_recorded_and_bf16_trains(toy_dataset):
    from moelab.train.precision import bf16_support, resolve_precision

    runs, units, _ = bf16_support("cpu")
    # auto on a CPU: bf16 only with bf16 units and a measured step speedup of at least 1.15
    for measured, expected in ((2.0, "bf16" if units else "fp32"), (1.1, "fp32"), (0.3, "fp32")):
        chosen, why = resolve_precision("auto", "cpu", lambda m=measured: m)
        assert chosen == expected and (f"{measured:.2f}× fp32's speed" in why) == units
    assert resolve_precision("auto", "cpu")[0] == "fp32"  # nothing measured: float32
    assert resolve_precision("fp32", "cpu", lambda: 1 / 0) == ("fp32", "requested")  # fp32 asked for: nothing measured
    with pytest.warns(UserWarning, match=r"bf16.*0\.40× fp32's speed"):
        assert resolve_precision("bf16", "cpu", lambda: 0.4)[0] == "bf16"  # forced: kept, with a warning
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        tiny(precision="half")
    model, train = tiny(max_steps=10, precision="bf16", log_every=1)
    trainer = Trainer(model, train, "bf16", dataset=toy_dataset, progress=False)
    result = trainer.fit()
    assert set(result.metrics["precision"]) == {"bf16"}
    assert result.metrics["loss"].map(math.isfinite).all()
    info = __import__("json").loads((trainer.reports / "config.json").read_text())
    assert info["precision"] == "bf16" and info["train"]["precision"] == "bf16"
    fp32 = Trainer(model, train.replace(precision="fp32"), "fp32", dataset=toy_dataset, progress=False).fit()
    # the same model and data in two precisions: close, not identical
    assert result.metrics["loss"].iloc[0] == pytest.approx(fp32.metrics["loss"].iloc[0], rel=0.02)
    assert result.metrics["loss"].tolist() != fp32.metrics["loss"].tolist()


@pytest.mark.skipif(
    not any(__import__("shutil").which(cc) for cc in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler",
)
def test_bf16_speedup_is_measured_on_the_model_without_touching_the_rng():
    from moelab.train.precision import bf16_step_speedup

    model, _ = tiny()
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ratio = bf16_step_speedup(model, 4, "cpu", repeats=2)
    assert torch.equal(torch.rand(3), expected)  # the run that follows draws the same numbers
    assert 0.01 < ratio < 100 and bf16_step_speedup(model, 4, "cpu") == ratio  # measured once, then cached


def test_compiled_training_matches_eager(toy_dataset):
    model, train = tiny(max_steps=4, log_every=1, precision="fp32")
    eager = Trainer(model, train, "eager", dataset=toy_dataset, progress=False).fit().metrics
    compiled = Trainer(model, train.replace(compile=True), "compiled", dataset=toy_dataset, progress=False).fit().metrics
    assert compiled["loss"].tolist() == pytest.approx(eager["loss"].tolist(), rel=1e-4)


def test_progress_lines_instead_of_the_bar(toy_dataset, capsys, monkeypatch):
    from moelab.train.progress import format_duration

    monkeypatch.setenv("MOELAB_PROGRESS", "log")
    model, train = tiny(max_steps=6, log_every=2, eval_every=3)
    trainer = Trainer(model, train, "lines", dataset=toy_dataset)
    trainer.progress_every_s = 0  # a line after every step (10 s by default)
    trainer.fit()
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("lines: step")]
    assert len(lines) == 1 + 6 + 1  # the starting point, every step, the end
    assert "step 6 · loss " in lines[-1] and " bpb · " in lines[-1] and "tok/s" in lines[-1] and lines[-1].endswith("done")
    assert "elapsed " in lines[3] and "left ~" in lines[3] and "val -" in lines[1] and "val -" not in lines[4]
    assert "%|" not in captured.err  # no tqdm bar
    assert [format_duration(s) for s in (42, 187, 7500)] == ["42s", "3m07s", "2h05m"]

    monkeypatch.setenv("MOELAB_PROGRESS", "log")
    quiet = Trainer(model, train, "quiet-lines", dataset=toy_dataset, progress=False)
    quiet.progress_every_s = 0
    quiet.fit()
    assert "quiet-lines: step" not in capsys.readouterr().out  # progress=False shows nothing


def test_window_helpers_gather_the_same_bytes():
    import numpy as np

    from moelab.data.batches import evenly_spaced_windows, fixed_windows, gather_windows

    data = np.arange(200, dtype=np.uint8)
    x, y = fixed_windows(data, 16, 5)
    starts = torch.linspace(0, 200 - 16 - 1, 5).long()  # the validation windows as before the split
    expected = torch.from_numpy(data).long()[starts.unsqueeze(1) + torch.arange(17)]
    assert torch.equal(x, expected[:, :-1]) and torch.equal(y, expected[:, 1:])
    assert np.array_equal(evenly_spaced_windows(data, 17, 5), expected.numpy().astype(np.uint8))
    assert torch.equal(gather_windows(torch.arange(10), torch.tensor([0, 7]), 3), torch.tensor([[0, 1, 2], [7, 8, 9]]))
    windows = evenly_spaced_windows(data, 10, 1000)  # at most one window per start
    assert windows.shape == (191, 10) and windows[-1, -1] == 199
    sampler = WindowSampler(data, seed=3)
    generator = torch.Generator().manual_seed(3 * 1009)
    xb, yb = sampler.batch(4, 8)
    starts = torch.randint(0, 200 - 8 - 1, (4,), generator=generator)
    assert torch.equal(xb[:, 0], starts) and torch.equal(yb[:, -1], starts + 8)


# ---------------------------------------------------------------------------- BPE datasets


# bpe_dataset: conftest.py


def test_a_model_whose_vocabulary_is_not_the_datasets_is_refused(bpe_dataset, capsys):
    model, train = tiny(max_steps=2)
    with pytest.raises(ValueError, match=r"built with the bpe tokenizer \(300 tokens\).*vocab_size=300"):
        Trainer(model, train, "bpe-wrong-vocab", dataset="toy-bpe", progress=False).fit()
    # the command line takes the dataset's vocabulary unless told otherwise
    common = ["--preset", "tiny", "--dataset", "toy-bpe", "--no-progress", "--set", "max_steps=2"]
    assert main([*common, "--run-name", "bpe-cli"]) == 0
    assert load_model(latest_checkpoint("bpe-cli")).config.vocab_size == 300
    assert main([*common, "--run-name", "bpe-cli-256", "--set", "vocab_size=256"]) == 2
    assert "vocab_size=300" in capsys.readouterr().err


def test_bpe_run_reports_bits_per_byte_of_the_validation_text(bpe_dataset):
    """val_bpb = the validation windows' total nats / ln 2 / the UTF-8 bytes their targets stand for."""
    from moelab.data import load_dataset

    model, train = tiny(max_steps=6, eval_every=6)
    result = Trainer(model.replace(vocab_size=300), train, "bpe-bpb", dataset="toy-bpe", progress=False).fit(overwrite=True)
    trainer_model = load_model(result.checkpoint)
    trainer = Trainer(model.replace(vocab_size=300), train, "bpe-bpb-probe", dataset="toy-bpe", progress=False)
    trainer._build()  # the same fixed validation windows
    tokenizer = load_dataset("toy-bpe").tokenizer
    with torch.no_grad():
        logits = trainer_model(trainer.data.val_x).logits
        nats = torch.nn.functional.cross_entropy(logits.reshape(-1, 300).double(), trainer.data.val_y.reshape(-1), reduction="sum")
    n_bytes = sum(len(tokenizer.to_bytes(row.tolist())) for row in trainer.data.val_y)
    assert n_bytes > 1.3 * trainer.data.val_y.numel()  # BPE tokens hold several bytes
    assert result.val_bpb == pytest.approx(nats.item() / math.log(2) / n_bytes, rel=1e-4)
    assert result.metrics["val_bpb"].dropna().iloc[-1] == pytest.approx(result.val_bpb, rel=1e-9)
    from moelab.runs.files import result_from_files  # (what a torchrun launch reads back)

    assert result_from_files("bpe-bpb").val_bpb == pytest.approx(result.val_bpb, rel=1e-9)
    # the checkpoint carries its tokenizer: scoring it from the file alone uses the dataset's BPE
    from moelab.evaluate.scoring import score_bytes, score_text

    text = "Capitu tinha olhos de ressaca. Ao vencedor, as batatas!"
    from_file = score_text(result.checkpoint, text, device="cpu")
    assert from_file.tokens == len(tokenizer.encode(text)) and from_file.bytes == len(text.encode())
    assert from_file.nats == pytest.approx(score_bytes(trainer_model, text.encode(), tokenizer=tokenizer).nats)


def test_resuming_with_a_dataset_rebuilt_with_another_tokenizer_is_refused(bpe_dataset):
    from moelab.runs.checkpoint import CheckpointError
    from moelab.data import prepare_dataset

    settings = dict(tokenizer="bpe", vocab_size=300, val_fraction=0.1, test_fraction=0.1, progress=False)
    prepare_dataset(bpe_dataset, "toy-bpe-again", **settings)
    model, train = tiny(max_steps=4, checkpoint_every=2)
    Trainer(model.replace(vocab_size=300), train, "bpe-resume", dataset="toy-bpe-again", progress=False).fit(
        overwrite=True, stop_after_steps=2
    )
    prepare_dataset(bpe_dataset, "toy-bpe-again", split_seed=7, **settings)  # other training works: other merges
    with pytest.raises(CheckpointError, match="another tokenizer"):
        Trainer(model.replace(vocab_size=300), train, "bpe-resume", dataset="toy-bpe-again", progress=False).fit(resume=True)
