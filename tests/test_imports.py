"""The modules of a generated package import one another in one direction:
no module imports one that (through any others) imports it back."""

import ast

import pytest
from conftest import EACH_CHOICE_ALONE


def package_modules(src):
    """{dotted name: (path, is a package)} of every module under src/."""
    modules = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def imported_modules(name, path, is_package, modules):
    """The package's modules that `name` imports, at the top or in a function.

    `from . import x` counts as an import of the submodule x when there is one,
    else of the package itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
    return found


def import_cycles(graph):
    """The groups of modules that import one another (Tarjan's strongly
    connected components of more than one module, or a module importing itself)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1 or module in graph[module]:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_import_cycles_are_found():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}, "d": {"d"}}
    assert import_cycles(graph) == [["a", "b"], ["d"]]


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_modules_import_one_another_in_one_direction(baked, answers):
    src = baked(**answers).project_path / "src"
    modules = package_modules(src)
    graph = {
        name: imported_modules(name, path, is_package, modules)
        for name, (path, is_package) in modules.items()
    }
    assert import_cycles(graph) == []
