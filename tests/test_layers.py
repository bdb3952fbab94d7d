"""The package's layers, read from the source (AST), not from a regex.

core (``sklearn_advdet/*.py`` and its core subpackages)  <  ``deep/`` (torch
side)  <  ``experiments/`` (uses both)  <  ``cli/`` (top).  Each module may
import only modules of its own layer or below; the torch side may use the
core's non-estimator modules only; a core module never imports torch at
module level; the import graph of the package has no circle; no module is
over 550 lines.  Every failure names the offending file, line and import.
"""

import ast
import sys
from pathlib import Path

import pytest

PKG = "sklearn_advdet"
ROOT = Path(__file__).resolve().parents[1] / PKG

LAYERS = {"core": 0, "deep": 1, "experiments": 2, "cli": 3}
#: the only core modules the torch side may import: no estimator among them
DEEP_MAY_USE = {
    "_layout", "store", "_store_lock", "_store_fingerprint", "_validation", "_device",
    "_progress", "_parallel", "_rounding", "datasets",
}
#: core modules that import torch at module level, and why that is allowed
TORCH_AT_MODULE_LEVEL_OK = {
    "_torch_nets": "the skorch detectors' nn.Modules; imported only inside fit/predict",
}
TORCH_MODULES = {"torch", "skorch", "torchvision", "torchattacks"}
MAX_LINES = 550


def _module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _layer(module):
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package facade: lazy string exports only
    if parts[1] in ("cli", "__main__"):
        return LAYERS["cli"]
    if parts[1] in ("deep", "experiments"):
        return LAYERS[parts[1]]
    return LAYERS["core"]


def _is_package(module):
    return MODULES[module].name == "__init__.py"


def _resolve(module, node):
    """Absolute module names an import node refers to (package modules only)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if _is_package(module) else module.rsplit(".", 1)[0]
    if node.level:
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in MODULES:
            out.append(sub)
        elif target == PKG:
            out.append(_facade_target(alias.name))
        else:
            out.append(target)
    return out


def _facade_target(name):
    """Where ``from sklearn_advdet import name`` really comes from."""
    tree = ast.parse(MODULES[PKG].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            exports = ast.literal_eval(node.value)
            if name in exports:
                return PKG + exports[name]
    return PKG


def _imports(module):
    """(lineno, target, at_module_level) for every import of ``module``."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    top = {id(n) for n in tree.body}
    # imports under a module-level ``if``/``try`` are module-level too
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _resolve(module, node):
                found.append((node.lineno, target, id(node) in top))
    return found


def _where(module, lineno, target):
    return f"{MODULES[module].relative_to(ROOT.parent)}:{lineno} imports {target}"


def test_layers_import_only_downwards():
    bad = []
    for module in MODULES:
        own = _layer(module)
        if own is None:
            continue
        for lineno, target, _ in _imports(module):
            if not target.startswith(PKG + ".") or target not in MODULES:
                continue
            other = _layer(target)
            if other is None:
                continue
            if other > own:
                bad.append(_where(module, lineno, target) + " (reaches up a layer)")
            elif own == LAYERS["deep"] and other == LAYERS["core"]:
                name = target.split(".")[1]
                if name not in DEEP_MAY_USE:
                    bad.append(_where(module, lineno, target)
                               + " (the torch side imports no estimator module)")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_core_never_imports_torch_at_module_level():
    bad = []
    for module in MODULES:
        if _layer(module) != LAYERS["core"]:
            continue
        if module.split(".")[-1] in TORCH_AT_MODULE_LEVEL_OK:
            continue
        for lineno, target, top in _imports(module):
            if top and target.split(".")[0] in TORCH_MODULES:
                bad.append(_where(module, lineno, target))
    assert not bad, "core modules importing torch at module level:\n" + "\n".join(bad)


def test_lazily_loaded_torch_modules_are_only_imported_lazily():
    bad = []
    for module in MODULES:
        for lineno, target, top in _imports(module):
            if top and target.split(".")[-1] in TORCH_AT_MODULE_LEVEL_OK \
                    and target.startswith(PKG) and _layer(module) == LAYERS["core"]:
                bad.append(_where(module, lineno, target))
    assert not bad, "\n".join(bad)


def _graph():
    graph = {m: set() for m in MODULES}
    lines = {}
    for module in MODULES:
        for lineno, target, _ in _imports(module):
            if target in MODULES and target != module and target != PKG:
                graph[module].add(target)
                lines.setdefault((module, target), lineno)
    return graph, lines


def test_no_import_circle():
    graph, lines = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    text = [" -> ".join(f"{a} (line {lines[(a, b)]})" for a, b in zip(c, c[1:]))
            + f" -> {c[-1]}" for c in cycles]
    assert not cycles, "import circles:\n" + "\n".join(text)


def test_modules_are_short():
    long = {m: n for m, p in MODULES.items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_layer_folders_exist():
    for sub in ("deep", "experiments", "cli"):
        assert (ROOT / sub / "__init__.py").is_file(), f"{PKG}/{sub}/ is missing"


def test_the_checker_catches_violations(tmp_path, monkeypatch):
    # the walker itself: an upward import and a module-level torch import in
    # a fake core module are both reported
    fake = ROOT / "_layers_probe_tmp.py"
    assert not fake.exists()
    fake.write_text("import torch\n\ndef f():\n    from .experiments import reproduce\n")
    try:
        MODULES[f"{PKG}._layers_probe_tmp"] = fake
        with pytest.raises(AssertionError, match="_layers_probe_tmp.py:4 imports "
                           "sklearn_advdet.experiments.reproduce"):
            test_layers_import_only_downwards()
        with pytest.raises(AssertionError, match="_layers_probe_tmp.py:1 imports torch"):
            test_core_never_imports_torch_at_module_level()
    finally:
        del MODULES[f"{PKG}._layers_probe_tmp"]
        fake.unlink()


def test_core_imports_without_torch():
    import subprocess

    core = sorted(m for m in MODULES if _layer(m) == LAYERS["core"]
                  and m.split(".")[-1] not in TORCH_AT_MODULE_LEVEL_OK)
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'skorch', 'torchvision'):\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, Block())\n"
            + "".join(f"import {m}\n" for m in core)
            + "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
