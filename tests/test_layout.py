"""The folder list reads as the design: each part imports only the parts below it, and no module imports in a circle.

core (the Keras library) < store (the run store's files) < engine (the experiment engine) < reports; the
commands (main, report, runs, export) sit on top. Checked from the source, without importing it.
"""

import ast
import glob
import os

from conftest import REPO

ORDER = {"core": 0, "store": 1, "engine": 2, "reports": 3}
COMMANDS = {"lottery_tf.main", "lottery_tf.report", "lottery_tf.runs", "lottery_tf.export", "lottery_tf"}
# Aliases of modules that moved into core/, kept one more release with a warning (CHANGELOG.md).
DEPRECATED = {"lottery_tf.pruning", "lottery_tf.masking", "lottery_tf.gradual", "lottery_tf.saliency"}


def _modules():
    found = {}
    for path in glob.glob(os.path.join(REPO, "lottery_tf", "**", "*.py"), recursive=True):
        name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


def _imports(path, modules):
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lottery_tf"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lottery_tf"))
    return out


def _part(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def test_each_part_imports_only_the_parts_below_it():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        mine = _part(module)
        if mine is None:
            assert module in COMMANDS | DEPRECATED, f"{module} is outside core, store, engine and reports"
            continue
        for target in _imports(path, modules):
            theirs = _part(target)
            if theirs is not None and ORDER[theirs] > ORDER[mine]:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_no_module_imports_in_a_circle():
    modules = _modules()
    graph = {m: {t for t in _imports(p, modules) if t in modules and t != m} for m, p in modules.items()}
    # A package's __init__ that imports its own modules (to register them) is not a circle of code.
    graph = {m: {t for t in ts if not (t.startswith(m + ".") and m != "lottery_tf")} for m, ts in graph.items()}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == []


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    private = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lottery_tf"):
                private += [
                    f"{module}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and node.module != module
                ]
    assert private == []
