"""The package's shape, as docs/package_map.md states it, read from the import
statements of the code (nothing is imported or run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def _modules(package: str) -> dict[str, Path]:
    """``{dotted module name: path}`` of every module of ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, modules: dict[str, Path]):
    """``(imported module, line, inside a function)`` for every import of ``path``
    naming one of ``modules`` (``from pkg import sub`` resolves to the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target in modules or target.split(".")[0] in ("glm_jax", "tasks"):
                yield target, node.lineno, id(node) in inside


def test_the_library_never_imports_tasks():
    modules = {**_modules("glm_jax"), **_modules("tasks")}
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in _modules("glm_jax").values()
                 for target, line, _ in _imports(path, modules) if target == "tasks" or target.startswith("tasks.")]
    assert not offenders, offenders


def test_no_import_cycle_in_the_library():
    modules = _modules("glm_jax")
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(path, modules):
            # A module's package __init__ runs first; an edge to it is not a cycle of ours.
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_function_level_imports_of_our_modules_say_why():
    modules = {**_modules("glm_jax"), **_modules("tasks")}
    silent = []
    for path in [*_modules("glm_jax").values(), *_modules("tasks").values()]:
        lines = path.read_text(encoding="utf-8").splitlines()
        for _, line, in_function in _imports(path, modules):
            if in_function and "#" not in lines[line - 1]:
                silent.append(f"{path.relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
    assert not silent, "\n".join(silent)


def test_no_module_is_over_500_lines():
    long = {str(path.relative_to(ROOT)): n for path in [*_modules("glm_jax").values(), *_modules("tasks").values()]
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checks_see_a_cycle_and_a_late_import(tmp_path):
    """The helpers above find what they look for (so a passing test means something)."""
    (tmp_path / "a.py").write_text("import glm_jax.b\n\ndef f():\n    from glm_jax import c\n")
    found = list(_imports(tmp_path / "a.py", {"glm_jax.b": None, "glm_jax.c": None}))
    assert found == [("glm_jax.b", 1, False), ("glm_jax.c", 4, True)]
