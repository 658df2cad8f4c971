import os
import pickle

import pytest
import torch

from moelab import CheckpointError, ModelConfig, Transformer, load_checkpoint, load_model, save_checkpoint
from moelab.runs.checkpoint import FORMAT_VERSION


def small_model(**changes) -> Transformer:
    config = ModelConfig(n_layers=2, n_heads=2, n_embd=16, context_window=8, n_experts=4, expert_hidden=16)
    return Transformer(config.replace(**changes)).eval()


def test_round_trip_gives_identical_logits(tmp_path):
    model = small_model(pos_encoding="rope", n_common_experts=1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))).loss.backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "run" / "ckpt.pt", model, optimizer=optimizer, step=7, extra={"note": "x"})
    loaded = load_model(path)
    assert loaded.config == model.config
    idx = torch.randint(0, 256, (3, 8))
    assert torch.equal(loaded(idx).logits, model(idx).logits)
    payload = load_checkpoint(path)
    assert payload["step"] == 7 and payload["extra"] == {"note": "x"}
    assert payload["optimizer"]["state"]
    # no temporary files left behind
    assert sorted(os.listdir(path.parent)) == ["ckpt.pt"]


def test_round_trip_keeps_the_balance_biases(tmp_path):
    model = small_model(balance="bias", gate="sigmoid", expert_granularity=2)
    with torch.no_grad():
        for block in model.blocks:
            block.moe.router.balance_bias.normal_()
    loaded = load_model(save_checkpoint(tmp_path / "c.pt", model))
    for mine, theirs in zip(model.blocks, loaded.blocks):
        assert torch.equal(theirs.moe.router.balance_bias, mine.moe.router.balance_bias)
    idx = torch.randint(0, 256, (3, 8))
    assert torch.equal(loaded(idx).logits, model(idx).logits)  # the biases choose the same experts


def test_tied_weights_stay_tied_after_loading(tmp_path):
    loaded = load_model(save_checkpoint(tmp_path / "c.pt", small_model()))
    assert loaded.head.weight is loaded.tok_emb.weight


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", small_model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_model(tmp_path / "nope.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "moelab-checkpoint", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path)
    with pytest.raises(pickle.UnpicklingError):  # the reference: torch itself refuses it
        torch.load(path, weights_only=True)


def test_newer_format_and_foreign_files_are_explained(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "c.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_model(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a moelab checkpoint"):
        load_model(path)


def test_config_mismatch_names_the_fields(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", small_model())
    with pytest.raises(CheckpointError, match="n_experts: checkpoint 4 vs expected 8"):
        load_model(path, expect_config=small_model(n_experts=8).config)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    path = save_checkpoint(tmp_path / "c.pt", model)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(path, model)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]
