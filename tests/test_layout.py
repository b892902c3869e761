"""The package's layout: layers, no import cycles, private APIs in one module."""

import ast
import os
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_kd"
ROOT = PACKAGE.parent


def _modules():
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree):
    """keras_kd modules imported anywhere in ``tree`` (function bodies included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "keras_kd":
                found |= {a.name for a in node.names}
            elif node.module.startswith("keras_kd."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("keras_kd.")}
            if any(a.name == "keras_kd" for a in node.names):
                found.add("__init__")
    return found


def _cycle(graph):
    """A cycle of the directed graph ``{node: {successors}}``, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_inside_keras_kd():
    modules = _modules()
    graph = {name: {m for m in _imports(tree) if m in modules and m != "__init__"} - {name}
             for name, tree in modules.items() if name != "__init__"}
    assert not any(m == "__init__" for deps in graph.values() for m in deps)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_layer_contracts_hold():
    """.importlinter's contracts (the layers of DESIGN.md), checked by import-linter."""
    from importlinter import cli
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli.lint_imports(config_filename=str(ROOT / ".importlinter"),
                                no_cache=True) == 0
    finally:
        os.chdir(cwd)


#: Private attributes of Keras / TensorFlow objects; reaching for them is views.py's job.
_PRIVATE_ATTRIBUTES = {"_keras_history", "_inbound_nodes", "_flatten_layers", "_functional",
                       "_nodes", "_symbolic_build", "_initial_epoch", "_retry_queue",
                       "_loss_tracker", "_compile_metrics", "_trainable_variables"}


def test_private_keras_and_tensorflow_apis_only_in_views():
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            modules = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                       [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(m.startswith(("keras.src", "tensorflow.python", "tensorflow.lite.python"))
                   for m in modules):
                offenders.append(f"{name}: imports {modules}")
            if isinstance(node, ast.Attribute) and node.attr in _PRIVATE_ATTRIBUTES:
                offenders.append(f"{name}: .{node.attr}")
    assert {o.split(":")[0] for o in offenders} <= {"views"}, offenders


def test_no_module_reaches_into_another_modules_private_names():
    """``module._name`` across keras_kd modules (e.g. the sweep calling the job's helpers)."""
    modules = _modules()
    offenders = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offenders.append(f"{name}: {node.value.id}.{node.attr}")
    assert offenders == []


def test_every_module_has_a_layer():
    """A module missing from .importlinter's layers would be bound by no contract."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    layers = (root / ".importlinter").read_text()
    modules = {p.stem for p in (root / "keras_kd").glob("*.py") if p.stem != "__init__"}
    missing = sorted(m for m in modules if f"keras_kd.{m}" not in layers)
    assert not missing, f"add these to a layer of .importlinter: {missing}"
