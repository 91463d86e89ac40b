"""The package's layout is its design: these tests keep the import rules the README draws.

- Boundaries depend one way: cli -> serving -> inference -> data -> models -> errors/atomic/files,
  and training -> inference, data, models. Nothing outside cli (and the lazy top-level API)
  reaches into training.
- TensorFlow is imported only by training/ (models/ may import it inside a function that only
  training calls); data/, inference/ and serving/ never import it at all.
- No import cycles between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "digitnet"
TENSORFLOW = ("tensorflow", "keras", "tf2onnx")

# Which boundaries each boundary may import from (its own modules always).
ALLOWED = {
    "": {"errors", "atomic", "files", "models", "data", "inference", "training", "serving", "cli"},
    "__main__": {"cli"},
    "errors": set(),
    "atomic": set(),
    "files": set(),
    "models": {"errors"},
    "data": {"errors", "atomic", "files", "models"},
    "inference": {"errors", "atomic", "files", "models", "data"},
    "training": {"errors", "atomic", "files", "models", "data", "inference"},
    "serving": {"errors", "atomic", "files", "models", "data", "inference"},
    "cli": {"errors", "atomic", "files", "models", "data", "inference", "training", "serving"},
}
NEVER_TENSORFLOW = {"errors", "atomic", "files", "data", "inference", "serving"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _boundary(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    module_level = {id(node) for node in tree.body}
    # Imports under `if TYPE_CHECKING:` at module level never run.
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            module_level.update(id(child) for child in ast.walk(node))
    found = []
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in module_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from digitnet.x import y` may name a submodule y.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            found += [(name, id(node) in module_level) for name in names]
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _internal(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_boundaries_import_one_way(module):
    boundary = _boundary(module)
    allowed = ALLOWED[boundary] | {boundary}
    for name, _ in _imports(MODULES[module]):
        target = _internal(name) if name.startswith("digitnet") else None
        # The root package itself (its __version__) imports nothing eagerly: anyone may use it.
        if target is not None and target != "digitnet":
            assert _boundary(target) in allowed, f"{module} imports {target}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_tensorflow_stays_in_training(module):
    boundary = _boundary(module)
    for name, module_level in _imports(MODULES[module]):
        if name.split(".")[0] not in TENSORFLOW:
            continue
        assert boundary in ("training", "cli", "models"), f"{module} imports {name}"
        assert boundary == "training" or not module_level, (
            f"{module} imports {name} at module level: only training/ may"
        )
        assert boundary not in NEVER_TENSORFLOW


def test_no_import_cycles():
    graph = {
        module: {
            target
            for name, module_level in _imports(path)
            if module_level and name.startswith("digitnet")
            for target in [_internal(name)]
            if target is not None and target != module and target != "digitnet"
        }
        for module, path in MODULES.items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(
            visiting[visiting.index(module) :] + [module]
        )
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_rules_see_every_boundary():
    # A new top-level module or package must be placed in ALLOWED deliberately.
    assert {_boundary(module) for module in MODULES} <= set(ALLOWED)
