"""The library's arithmetic does not drift when its code moves.

The fixture was written before the library was split into packages: 20 steps of the
``tiny`` preset (fp32, a fixed seed) on the toy corpus, every training loss and every
validation loss. Refactoring must reproduce them on a CPU to within 1e-5 relative: another
CPU's fp32 kernels round otherwise (on a Xeon with AMX the losses differ from the fixture by
up to 2e-7 relative from step 6 on), while a change of the arithmetic moves them by far more.
To rewrite it (only for an intended change of the arithmetic):
``MOELAB_WRITE_TRACE=1 python -m pytest tests/test_loss_trace.py``.
"""

import json
import os
from pathlib import Path

from moelab.config.presets import preset
from moelab.train.trainer import Trainer

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_20_steps_losses.json"


def tiny_trace(dataset: str) -> dict[str, list[float]]:
    p = preset("tiny")
    train = p.train.replace(log_every=1, seed=1234)
    metrics = Trainer(p.model, train, "loss-trace", dataset=dataset, progress=False).fit().metrics
    val = metrics["val_loss"].dropna() if "val_loss" in metrics else []
    return {"loss": [float(v) for v in metrics["loss"]], "val_loss": [float(v) for v in val]}


def test_tiny_preset_reproduces_the_committed_loss_trace(toy_dataset):
    trace = tiny_trace(toy_dataset)
    if os.environ.get("MOELAB_WRITE_TRACE"):
        FIXTURE.write_text(json.dumps(trace, indent=1) + "\n")
    expected = json.loads(FIXTURE.read_text())
    assert len(trace["loss"]) == 20 and len(trace["val_loss"]) >= 1
    for key in ("loss", "val_loss"):
        worst = max(abs(a / b - 1) for a, b in zip(trace[key], expected[key], strict=True))
        assert worst <= 1e-5, f"{key} drifted from the committed trace by {worst:.1e} relative"


def test_a_checkpoint_written_before_the_packages_resumes_to_the_same_losses(toy_dataset):
    """checkpoint_before_packages.pt: step 10 of 20 of the tiny preset with balance="bias", written by
    moelab before the library became packages (the router's tensors were then moe.gate, moe.balance_bias);
    the JSON holds that version's losses of steps 11-20 of the same, uninterrupted run."""
    import shutil

    from moelab import ModelConfig, TrainConfig
    from moelab.runs.files import checkpoint_dir

    expected = json.loads((FIXTURE.parent / "resume_after_step_10.json").read_text())
    model, train = ModelConfig.from_dict(expected["model"]), TrainConfig.from_dict(expected["train"])
    folder = checkpoint_dir("resume-old-checkpoint")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE.parent / "checkpoint_before_packages.pt", folder / "ckpt_0000010.pt")
    metrics = Trainer(model, train, "resume-old-checkpoint", dataset=toy_dataset, progress=False).fit(resume=True).metrics
    assert metrics["step"].tolist() == expected["steps"]
    # Bit-identical on the CPU that wrote the fixture; another CPU's fp32 kernels round otherwise (an AMD
    # EPYC with AVX2 only: 1e-7 relative from step 13 on). A lost optimizer state, bias, RNG or data
    # position moves the losses by far more than the tolerance.
    for key, got in (("loss", metrics["loss"]), ("val_loss", metrics["val_loss"].dropna())):
        worst = max(abs(float(a) / b - 1) for a, b in zip(got, expected[key], strict=True))
        assert worst <= 1e-5, f"{key} after resuming differs from the uninterrupted run by {worst:.1e} relative"
