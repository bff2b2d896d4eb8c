"""The package's layers: every module of src/deepinit imports only from its own layer and the layers below it.

LAYERS lists deepinit's packages bottom to top. Every import counts, inside functions too (a lazy import is still
a dependency), except those under `if TYPE_CHECKING:` (type hints only, never run). `python tests/test_layers.py`
prints the violations; under pytest each kind of finding is one test.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# deepinit's packages, bottom to top: a module may import from its own package and from those before it.
LAYERS = [
    "base",  # what every layer may use, knowing nothing of the study: setting rules, Lightning's private names
    "data",  # the data sets: provisioning, the in-memory DataModule
    "network",  # the network and its init: activations, the MLP, the init schemes
    "theory",  # the variance theory, plain functions
    "propagate",  # the notebook's experiments against the theory (no training)
    "results",  # what a run leaves: summary.json as one record
    "observe",  # what a run measures: layer statistics, their recorder and callback, learning speed, figures
    "settings",  # a run's settings, checked once at the boundary with Hydra
    "training",  # the LightningModule and its training steps
    "run",  # one run: its parts, life, stopping, checkpoints, logger, progress, folder
    "batched",  # a group of same-shape runs trained as one stacked model
    "sweep",  # a sweep's jobs and its report
]

PACKAGE = "deepinit"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to: deepinit.<layer>...; "" for deepinit itself, None outside it."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else ""


def rank(layer: str) -> int:
    """The layer's height: -1 for the package root (below every layer), len(LAYERS) for a name in no layer."""
    if layer == "":
        return -1
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the tree but those under `if TYPE_CHECKING:`; a `from X import
    name` counts as X.name (name may be a submodule: `from deepinit import theory` imports deepinit.theory)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def violations(src: Path = SRC) -> list[str]:
    """One line per upward import (path:line: module (layer) imports module (layer)), per module outside any layer,
    and per package of deepinit missing from LAYERS."""
    found = []
    for path in sorted(src.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        where = path.relative_to(src.parents[1])
        if own != "" and own not in LAYERS:
            found.append(f"{where}: {module} is in no layer (LAYERS: {', '.join(LAYERS)})")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, imported in imports(tree, module, path.name == "__init__.py"):
            theirs = layer_of(imported)
            if theirs is None or theirs == own:
                continue
            if rank(theirs) > rank(own):
                found.append(f"{where}:{line}: {module} ({own or 'root'}) imports {imported} ({theirs or 'root'}), "
                             f"a layer above it")  # fmt: skip
    packages = {p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found += [f"{src.relative_to(src.parents[1])}/{name}/: a package missing from LAYERS" for name in
              sorted(packages - set(LAYERS))]  # fmt: skip
    found += [f"LAYERS names {name}, which is not a package of {PACKAGE}" for name in LAYERS if name not in packages]
    return found


def test_no_upward_imports() -> None:
    found = [v for v in violations() if "imports" in v]
    assert not found, "upward imports:\n" + "\n".join(found)


def test_every_module_in_a_layer() -> None:
    found = [v for v in violations() if "imports" not in v]
    assert not found, "\n".join(found)


if __name__ == "__main__":
    src = Path(sys.argv[1]) / "src" / PACKAGE if len(sys.argv) > 1 else SRC
    found = violations(src)
    print("\n".join(found) if found else f"{len(LAYERS)} layers, no upward import: {' < '.join(LAYERS)}")
    sys.exit(1 if found else 0)
