"""Kernels know no formats: no module under qlora/kernels imports another qlora subpackage (ARCHITECTURE.md).

A static check over the source (AST), so that a lazy import inside a function is caught too.
"""

import ast
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "qlora" / "kernels"
MODULES = sorted(KERNELS.glob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`; relative imports resolved from qlora.kernels."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from .. import y: resolve against qlora.kernels
                base = ["qlora", "kernels"][: max(0, 3 - node.level)]
                names.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                names.append((node.lineno, node.module))
    return names


def upward_imports(path: Path) -> list[str]:
    return [f"{path.name}:{line} imports {name}" for line, name in imported_modules(path)
            if (name == "qlora" or name.startswith("qlora.")) and not (name == "qlora.kernels" or name.startswith("qlora.kernels."))]  # fmt: skip


def test_there_are_kernel_modules_to_check():
    assert {p.name for p in MODULES} >= {"__init__.py", "blockwise.py", "fused_matmul.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_kernel_modules_import_nothing_above_them(path):
    assert upward_imports(path) == []


@pytest.mark.parametrize("source, bad", [
    ("from qlora.quant.state import QuantizedTensor\n", ["qlora.quant.state"]),
    ("def f():\n    import qlora.nn.functional\n", ["qlora.nn.functional"]),
    ("from .. import config\n", ["qlora"]),
    ("from ..quant import api\n", ["qlora.quant"]),
    ("from qlora.kernels.blockwise import x\nfrom . import fused_matmul\nimport torch\n", []),
])  # fmt: skip
def test_the_check_catches_upward_imports(tmp_path, source, bad):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert [message.split(" imports ")[1] for message in upward_imports(path)] == bad
