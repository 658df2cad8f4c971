import os
import random

import pytest
import torch

from moelab.data import prepare_dataset

# The device of the tests marked ``on_device`` (the ``device`` fixture): cpu unless
# MOELAB_TEST_DEVICE names another (tools/gpu_check.sh runs them with cuda).
TEST_DEVICE = os.environ.get("MOELAB_TEST_DEVICE", "cpu")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "on_device: runs on $MOELAB_TEST_DEVICE (default cpu) through the device fixture"
    )


@pytest.fixture
def device() -> torch.device:
    """The device the ``on_device`` tests run on ($MOELAB_TEST_DEVICE, default cpu)."""
    from moelab.device import resolve_device

    return resolve_device(TEST_DEVICE)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


SENTENCES = [
    "A vida é uma ópera e uma grande ópera.",
    "O tenor e o barítono lutam pelo soprano, em presença do baixo e dos comprimários.",
    "Não consultes dicionários; Casmurro não está aqui no sentido que eles lhe dão.",
    "— Continue, disse eu acordando.",
    "Capitu tinha olhos de ressaca, olhos de cigana oblíqua e dissimulada.",
    "Ao vencedor, as batatas!",
]


def write_toy_corpus(folder) -> None:
    """Twelve works of random Portuguese sentences in three categories under ``folder``."""
    rng = random.Random(0)
    for category in ("romance", "conto", "teatro"):
        (folder / category).mkdir()
        for i in range(4):
            text = "\n".join(" ".join(rng.choice(SENTENCES) for _ in range(5)) for _ in range(60))
            (folder / category / f"obra{i}.txt").write_text(text, encoding="utf-8")


@pytest.fixture(scope="session")
def toy_dataset() -> str:
    """A small prepared dataset ("toy") of Portuguese sentences in the session's data folder."""
    from pathlib import Path
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="moelab-toy-corpus-"))
    write_toy_corpus(folder)
    prepare_dataset(folder, "toy", val_fraction=0.1, test_fraction=0.1, progress=False)
    return "toy"


@pytest.fixture(scope="session")
def bpe_dataset(tmp_path_factory):
    """The toy corpus as a BPE dataset of 300 tokens ("toy-bpe"); returns the corpus's folder."""
    folder = tmp_path_factory.mktemp("bpe-corpus")
    write_toy_corpus(folder)
    prepare_dataset(folder, "toy-bpe", tokenizer="bpe", vocab_size=300, val_fraction=0.1, test_fraction=0.1, progress=False)
    return folder
