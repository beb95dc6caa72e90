"""The package's import structure: no import cycle between its modules, and no module imports another module's
`_private` name (issue: one home per concern). Reads the source with `ast`, so imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import mambava

PACKAGE = Path(mambava.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """module -> [(imported module, imported name or None, line)] for imports of mambava modules."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, list[tuple[str, str | None, int]]] = {}
    for name, path in modules.items():
        entries = found.setdefault(name, [])
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                entries += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("mambava")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if not base.startswith("mambava"):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:  # `from mambava import faces` imports a module
                        entries.append((sub, None, node.lineno))
                    else:
                        entries.append((base, alias.name, node.lineno))
    return found


def test_no_module_imports_another_modules_private_name():
    bad = [
        f"{mod}:{line} imports {name} from {target}"
        for mod, entries in _imports().items()
        for target, name, line in entries
        if name and name.startswith("_") and not name.startswith("__") and target != mod
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    # a submodule importing its own package (whose __init__ imports the submodule) is not a cycle
    graph = {
        mod: {t for t, _, _ in entries if t != mod and not mod.startswith(t + ".")}
        for mod, entries in _imports().items()
    }
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_library_never_imports_the_command_line():
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, entries in _imports().items()
        if not mod.startswith("mambava.cli") and mod != "mambava.__main__"
        for target, _, line in entries
        if target.startswith("mambava.cli")
    ]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------------------
# Rooms and layers (docs/architecture.md): a room imports only rooms on an earlier line, or itself.

LAYERS = [
    ["core"],
    ["media"],
    ["data"],
    ["faces", "audio"],
    ["backbone"],
    ["temporal"],
    ["analysis"],
    ["training"],
    ["inference"],
    ["distributed"],
    ["serve"],
    ["synth"],
    ["demo"],
    ["benchmarks"],
    ["cli"],
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
ROOT_MODULES = {"mambava", "mambava.__main__"}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in ROOT_MODULES else None


def wrong_way_imports(imports: dict[str, list[tuple[str, str | None, int]]]) -> list[str]:
    bad = []
    for module, entries in imports.items():
        room = room_of(module)
        if room is None:
            continue
        for target, _, line in entries:
            target_room = room_of(target)
            if target_room is None or target_room == room:
                continue
            if RANK[target_room] >= RANK[room]:
                bad.append(f"{module}:{line} imports {target} ({room} may not import {target_room})")
    return bad


def test_every_module_lives_in_a_room():
    """The package root keeps only __init__ and __main__; every other module is in a room of LAYERS."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    homeless = sorted(m for m in modules - ROOT_MODULES if room_of(m) not in RANK)
    assert homeless == []


def test_rooms_import_only_earlier_rooms():
    bad = wrong_way_imports(_imports())
    assert not bad, "\n".join(bad)


def test_the_layering_check_catches_a_planted_wrong_way_import():
    """A planted import of inference from faces (a lower room) is reported; the real graph is not."""
    planted = _imports()
    planted["mambava.faces.align"] = [*planted["mambava.faces.align"], ("mambava.inference.predict", "Predictor", 1)]
    assert wrong_way_imports(planted) == [
        "mambava.faces.align:1 imports mambava.inference.predict (faces may not import inference)"
    ]
