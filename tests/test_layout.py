"""The package's shape: no import circles between modules, no folder that imports a sibling which imports it
back, and no function longer than the limit. Parses the source; imports nothing of reftune.

    python tests/test_layout.py   # prints the import graph's folder edges and the longest functions
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reftune"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = ["reftune", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The reftune modules a module imports (at any depth: lazy imports inside functions count too)."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(tree, known) - {name} for name, tree in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def folder(module: str) -> str:
    """The top-level folder of a module ("reftune.rl.loop" -> "rl"); modules at the top are their own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "reftune"


def is_package(module: str) -> bool:
    return (SRC.joinpath(*module.split(".")[1:]) / "__init__.py").is_file()


def folder_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            if folder(a) != folder(b) and not (is_package(b) and b == "reftune"):
                out.setdefault(folder(a), set()).add(folder(b))
    return out


def function_lengths() -> list[tuple[int, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(SRC)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_no_import_cycle_between_modules():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_no_import_cycle_between_folders():
    cycle = find_cycle(folder_edges(graph()))
    assert cycle is None, f"folders import each other back: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_function_is_longer_than_the_limit():
    too_long = [(n, where) for n, where in function_lengths() if n > MAX_FUNCTION_LINES]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


if __name__ == "__main__":
    for a, bs in sorted(folder_edges(graph()).items()):
        print(f"{a:10} -> {', '.join(sorted(bs))}")
    print("longest functions:")
    for n, where in function_lengths()[:8]:
        print(f"  {n:4} {where}")
