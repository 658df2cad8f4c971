"""The `moelab` command: one entry point for every command line, and `moelab prepare` for any text."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moelab.__main__ import COMMANDS, main
from moelab.data import load_dataset

from .conftest import write_toy_corpus


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for command in ["info", "runs", *COMMANDS]:
        assert f"\n  {command} " in listed, command


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage:" in out
    assert "%%" not in out  # argparse formats help= strings but prints a description as written


def test_an_unknown_command_is_a_clear_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_prepare_names_a_folder_dataset_after_the_folder(tmp_path, capsys):
    folder = tmp_path / "cartas"
    folder.mkdir()
    write_toy_corpus(folder)
    assert main(["prepare", str(folder), "--no-progress", "--val-fraction", "0.1", "--test-fraction", "0.1"]) == 0
    assert "dataset 'cartas'" in capsys.readouterr().out
    prepared = load_dataset("cartas")
    assert len(prepared.catalog) == 12 and set(prepared.catalog["category"]) == {"romance", "conto", "teatro"}


def test_prepare_reports_a_missing_source(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_console_script_is_installed():
    script = shutil.which("moelab", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . installs the moelab command (pyproject's [project.scripts])"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, env=os.environ, check=True).stdout
    assert "moelab prepare mytexts/" in out
