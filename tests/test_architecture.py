"""The package layers: imports point one way, and no module imports one in a cycle.

    ir  ->  codegen  ->  fusion kernels  ->  plan builder  ->  runtime  ->  public API

Every import counts, function-level ones included (there are none between our
modules; triton itself is imported inside functions where importing it would
cost the eager CPU path ~0.3 s).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ir", "codegen", "fusion")

# rank of each layer; a module may import only modules of its own rank or lower
LAYERS = {
    "ir": 0,
    "codegen": 1,
    "fusion.modes": 2,
    "fusion.layout": 3, "fusion.matmul_layout": 3, "fusion.matmul_tiles": 3,
    "fusion.kernel": 3, "fusion.matmul_kernel": 3, "fusion.checks": 3,
    "fusion.passes": 4, "fusion.partition": 4, "fusion.plan": 4,
    "fusion.runtime": 5,
    "fusion.guards": 6, "fusion.signature": 6, "fusion.hot_path": 6, "fusion.api": 6, "fusion.dynamo": 6,
    "fusion.dynamo_capture": 6, "fusion.report": 6,
    "fusion.explain": 6, "fusion": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).glob("*.py"):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            out[name] = path
    return out


def _imports(path: Path, modules: dict) -> set[str]:
    """Our modules that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def _rank(module: str) -> int:
    if module in LAYERS:
        return LAYERS[module]
    return LAYERS[module.split(".")[0]]


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) - {m} for m, p in MODULES.items()}


def test_every_fusion_module_has_a_layer():
    missing = [m for m in MODULES if m.startswith("fusion") and m not in LAYERS]
    assert not missing, f"add these to LAYERS (and to the README's architecture): {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    up = [m for m in GRAPH[module] if _rank(m) > _rank(module)]
    assert not up, f"{module} (layer {_rank(module)}) imports from a layer above: {up}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
