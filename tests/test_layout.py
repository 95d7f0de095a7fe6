"""The package layout's rules: the pure-Python layers and the settings load no JAX, no module-level
import cycle, and the tests mirror the package. (``lint-imports``, run by ``make test``, checks the layer order from ``.importlinter``.)"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import ttpa_jax

PACKAGE = Path(ttpa_jax.__file__).parent
TESTS = Path(__file__).resolve().parent
# Test files that test the whole package, not one subpackage: they alone sit in tests/ itself.
WHOLE_PACKAGE_TESTS = {
    "test_cli.py",  # every stage's command line through core.cli.stage_main
    "test_faults.py",  # sample and evaluate killed mid-run, then run again
    "test_layout.py",  # the layers, the import cycles, this layout
    "test_wheel.py",  # the built wheel, installed outside the checkout
}
JAX_FREE_PACKAGES = ("ttpa_jax.core", "ttpa_jax.tools", "ttpa_jax.construct")
# Settings and metrics modules that stages and --help import: JAX is loaded only when a model runs.
JAX_FREE_MODULES = ("ttpa_jax", "ttpa_jax.model.settings", "ttpa_jax.model.config", "ttpa_jax.train.config",
                    "ttpa_jax.train.cli", "ttpa_jax.train.methods", "ttpa_jax.plan.memory", "ttpa_jax.export.exporter",
                    "ttpa_jax.export.settings", "ttpa_jax.experiments.pipeline", "ttpa_jax.evaluate.evaluator",
                    "ttpa_jax.evaluate.bfcl", "ttpa_jax.evaluate.report", "ttpa_jax.decode.settings")
HEAVY = ("jax", "flax", "optax", "orbax")


def _modules_under(package: str) -> list[str]:
    path = PACKAGE.parent / package.replace(".", "/")
    return [package] + [f"{package}.{m.name}" for m in pkgutil.walk_packages([str(path)], "") if m.name != "__main__"
                        and not m.name.endswith(".__main__")]


def test_the_pure_python_layers_and_the_settings_load_no_jax():
    modules = [m for p in JAX_FREE_PACKAGES for m in _modules_under(p)] + list(JAX_FREE_MODULES)
    assert len(modules) > 30  # every module of the three packages, not just their __init__
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def _module_level_imports(path: Path, module: str, known: set[str]) -> set[str]:
    """``ttpa_jax`` modules that ``module`` imports at module level (not inside a function).
    ``from P import m`` of a submodule ``m`` is an edge to ``P.m`` (importing P itself is implicit)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try)):  # guarded imports still run at import time
            stack += node.body + node.orelse + getattr(node, "finalbody", []) + [
                n for h in getattr(node, "handlers", []) for n in h.body]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & known
            found |= subs if len(subs) == len(node.names) else subs | {base}
    return {m for m in found if m in known and m != module}


def test_no_module_level_import_cycle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {m: _module_level_imports(p, m, set(modules)) for m, p in modules.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert len(graph) > 80 and cycles == []


def test_the_tests_mirror_the_package():
    """``tests/<package>/test_*.py`` tests ``ttpa_jax/<package>``: each test file lies in a directory named
    after an existing subpackage, or in ``tests/`` itself when it is one of WHOLE_PACKAGE_TESTS. The test
    directories have no ``__init__.py`` (pytest imports each file by its base name), so names stay unique."""
    files = sorted(TESTS.rglob("test_*.py"))
    misplaced = [str(p.relative_to(TESTS)) for p in files if p.parent != TESTS
                 and not (PACKAGE / p.parent.relative_to(TESTS) / "__init__.py").is_file()]
    assert misplaced == [], f"test files outside a directory named after a ttpa_jax subpackage: {misplaced}"
    assert {p.name for p in files if p.parent == TESTS} == WHOLE_PACKAGE_TESTS
    names = [p.name for p in files]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    assert len(files) > 40
