"""The package's shape: no import runs in a circle, counting imports inside functions (which hide
a circle from Python at import time but not from a reader), and no function longer than 60 lines."""

import ast
from pathlib import Path

import egoscale

ROOT = Path(egoscale.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the egoscale modules it imports, anywhere in its code."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_back_into_a_module_that_imports_it():
    graph = import_graph()
    assert "egoscale.train.loop" in graph and "egoscale.train.training_state" in graph["egoscale.train.loop"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_function_is_longer_than_a_screenful_and_a_half():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_every_egoscale_name_the_benchmarks_import_exists():
    # the benchmarks run on other machines (a lent GPU) and some import inside code they send to
    # a subprocess: a name moved in egoscale/ must not break them there
    import importlib
    import re

    pattern = re.compile(r"from (egoscale[\w.]*) import \(?([\w, \n]+?)\)?\s*$", re.M)
    found = 0
    for path in (ROOT.parent / "benchmarks").glob("*.py"):
        for module, names in pattern.findall(path.read_text()):
            mod = importlib.import_module(module)
            for name in (n.strip() for n in names.replace("\n", " ").split(",")):
                if name:
                    found += 1
                    assert hasattr(mod, name), f"{path.name}: {module} has no {name}"
    assert found > 20


def test_importing_a_module_runs_nothing_but_its_declarations():
    # a module's top level defines; it does not call (a global warnings filter, a version check that
    # can fail before a command has parsed its arguments), except the model registry's entries
    def calls(body):
        for node in body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                yield node
            elif isinstance(node, (ast.Try, ast.If, ast.With)):
                for block in (node.body, getattr(node, "orelse", []), *[h.body for h in getattr(node, "handlers", [])]):
                    yield from calls(block)

    found = [f"{name}:{node.lineno} {ast.unparse(node)[:60]}" for name, path in _modules().items()
             for node in calls(ast.parse(path.read_text()).body)
             if not (name == "egoscale.models.registry" and ast.unparse(node.value.func) == "register")]
    assert found == []
