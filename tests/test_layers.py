"""The library's packages depend one way: a module imports only from its own layer or below.

Every ``import`` and ``from … import`` of every module is read, those inside functions
too (a function-level import is still a dependency). A package's ``__init__`` re-exports
only from inside the package, and the top-level ``moelab/__init__.py`` and ``__main__.py``
(the public API and the command) may import from anywhere.
"""

import ast
from pathlib import Path

import moelab

LIB = Path(moelab.__file__).parent
# lowest first; the utilities at the bottom import nothing from moelab
LAYERS = [
    {"paths", "timing", "stats", "device"},
    {"config"},
    {"data"},
    {"nn"},
    {"generate"},
    {"runs"},
    {"train"},
    {"evaluate"},
    {"sweep"},
    {"forecast"},
    {"bench"},
    {"views"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path, lib: Path = LIB) -> str:
    parts = list(path.relative_to(lib.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, lib: Path = LIB) -> set[str]:
    """The moelab modules (or names in them) a file imports, relative imports resolved."""
    own = module_name(path, lib)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" for a in node.names} if base == "moelab" else {base}
    return {name for name in found if name.split(".")[0] == "moelab"}


def top_package(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def upward_imports(lib: Path = LIB) -> list[str]:
    """Every import from a higher layer, as 'module imports name'."""
    found = []
    for path in sorted(lib.rglob("*.py")):
        own = module_name(path, lib)
        if own == "moelab" or (path.parent == lib and path.name == "__main__.py"):
            continue  # the public API and the `python -m moelab` command
        for name in sorted(imported_modules(path, lib)):
            target = top_package(name)
            if target is None or target not in RANK:
                found.append(f"{own} imports {name} (moelab's own __init__ imports every layer)")
            elif RANK[target] > RANK[top_package(own)]:
                found.append(f"{own} imports {name}")
    return found


def test_every_module_belongs_to_a_layer():
    for path in LIB.rglob("*.py"):
        top = top_package(module_name(path))
        assert top is None or top in RANK, f"{path.relative_to(LIB)}: add its package to LAYERS in {__file__}"


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_upward_imports_inside_functions(tmp_path):
    lib = tmp_path / "moelab"
    (lib / "nn").mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "nn" / "__init__.py").write_text("")
    (lib / "nn" / "model.py").write_text(
        "from moelab.config import configs\nfrom . import attention\n\n\n"
        "def f():\n    from ..train import trainer\n    import moelab.views.plots\n"
    )
    assert imported_modules(lib / "nn" / "model.py", lib) == {
        "moelab.config", "moelab.nn", "moelab.train", "moelab.views.plots"
    }
    assert upward_imports(lib) == ["moelab.nn.model imports moelab.train", "moelab.nn.model imports moelab.views.plots"]
