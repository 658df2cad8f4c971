"""Refresh the notebook outputs that nbval compares (`make notebook-outputs`).

Runs every notebooks/NN_*.ipynb in order in the tiny profile (fresh data and reports
folders, the corpus from $MOELAB_CORPUS_MIRROR or ../shared/data/machado), then keeps
the outputs (and execution counts) of the cells tagged ``nbval-check-output`` and
strips every other cell's. `pytest --nbval-lax` re-runs the notebooks and compares
exactly those cells; tests/test_notebooks.py checks that no other cell carries output.

``python tools/checked_outputs.py 00_moe_by_hand`` rewrites only the named notebooks;
the others still run first when they come earlier (02 needs 01's dataset, 03 02's run).
"""

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from moelab.views.pipeline import LocalKernelManager  # noqa: E402  (kernels over IPC: no TCP warning)

ROOT = Path(__file__).resolve().parents[1]
TAG = "nbval-check-output"


def keep_checked_outputs(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps of this run
        if cell.cell_type != "code":
            continue
        if TAG not in cell.metadata.get("tags", []):  # nbval wants a checked cell's count (it does not compare it)
            cell.outputs = []
            cell.execution_count = None


def main(argv: list[str]) -> int:
    mirror = os.environ.get("MOELAB_CORPUS_MIRROR") or str(ROOT.parent / "shared" / "data" / "machado")
    if not Path(mirror).is_dir():
        print(f"needs the Machado corpus mirror; set MOELAB_CORPUS_MIRROR (tried {mirror})", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="moelab-outputs-"))
    os.environ.update(
        MOELAB_PROFILE="tiny",
        MOELAB_CORPUS_MIRROR=mirror,
        MOELAB_DATA_DIR=str(scratch / "data"),
        MOELAB_REPORTS_DIR=str(scratch / "reports"),
    )
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    wanted = {name.removesuffix(".ipynb") for name in argv} or {path.stem for path in notebooks}
    unknown = wanted - {path.stem for path in notebooks}
    if unknown:
        print(f"no such notebook(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 1
    last = max(i for i, path in enumerate(notebooks) if path.stem in wanted)
    for path in notebooks[: last + 1]:
        nb = nbformat.read(path, as_version=4)
        metadata = dict(nb.metadata)  # kept as committed (execution adds widget state, versions)
        NotebookClient(
            nb,
            kernel_name="moelab",
            kernel_manager_class=LocalKernelManager,
            timeout=900,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
        if path.stem not in wanted:
            print(f"{path.name}: ran (needed by a later notebook), left as it is")
            continue
        keep_checked_outputs(nb)
        nb.metadata = nbformat.from_dict(metadata)
        nbformat.write(nb, path)
        print(
            f"{path.name}: kept the outputs of {sum(TAG in c.metadata.get('tags', []) for c in nb.cells)} checked cell(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
