"""The import graph follows the layering of ARCHITECTURE.md: every import (also inside functions) runs
from a higher layer to a lower one, never upwards; `train` knows no datasets or reports, `eval` no
trainer, `kernels` no formats."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QLORA = ROOT / "qlora"

# higher number = higher layer; a module may import modules of its own or a lower layer
LAYERS = {
    "cli": 100, "__main__": 100, "pipeline": 90, "report": 80, "eval": 70, "train": 60, "distributed": 55, "data": 50,
    "models": 40, "optim": 30, "nn": 20, "config": 15, "quant": 10, "kernels": 5,
    # utilities every layer may use
    "checks": 0, "atomic": 0, "readers": 0, "_lazy": 0, "__init__": 0,
}  # fmt: skip
FORBIDDEN = {("train", "data"), ("train", "report"), ("train", "eval"), ("eval", "train"), ("kernels", "quant")}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "qlora":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> list[tuple[str, str, str]]:
    """(file, importing layer, imported qlora module) for every import in the package."""
    edges = []
    for path in sorted(QLORA.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = _layer_of(".".join(rel.with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "qlora"]
            for name in names:
                if _layer_of(name) is not None:
                    edges.append((str(rel), own, name))
    return edges


def test_every_module_has_a_layer():
    unknown = sorted({own for _, own, _ in _edges() if own not in LAYERS})
    assert unknown == [], f"add these to LAYERS (and ARCHITECTURE.md): {unknown}"


def test_no_import_runs_upwards():
    upward = []
    for file, own, name in _edges():
        target = _layer_of(name)
        if target in LAYERS and own in LAYERS and own != "__init__" and LAYERS[target] > LAYERS[own]:
            upward.append(f"{file} ({own}) imports {name} ({target})")
    assert upward == []


@pytest.mark.parametrize("low, high", sorted(FORBIDDEN))
def test_forbidden_dependencies(low, high):
    found = [f"{file} imports {name}" for file, own, name in _edges() if own == low and _layer_of(name) == high]
    assert found == []
