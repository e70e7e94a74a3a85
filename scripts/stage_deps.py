"""The project files a DVC stage's command imports, computed from the code (static, transitive).

    .venv/bin/python scripts/stage_deps.py stages/train.py     # prints the minimal deps list for dvc.yaml

Every `import` statement counts, also those inside functions (lazy imports run when the stage does its
work); importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too; `from package import X` follows
the package's lazy table (qlora._lazy) to the module that defines X. tests/pipeline/test_dvc_contract.py
checks dvc.yaml against this for every stage.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("qlora",)  # project packages (installed); stages/ modules import each other by bare name


def _lazy_table(init: Path) -> dict[str, str]:
    """A package's table of lazy names (qlora._lazy), or {}."""
    tree = ast.parse(init.read_text())
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and target.id == "_LAZY":
                return ast.literal_eval(node.value)
    return {}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] in PACKAGES:
        base = ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    if len(parts) == 1 and (ROOT / "stages" / f"{name}.py").is_file():
        return ROOT / "stages" / f"{name}.py"
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] if "." in package else package
    else:
        package = package.rsplit(".", 1)[0] if "." in package else ""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            init = _module_file(base) if base else None
            lazy = _lazy_table(init) if init is not None and init.name == "__init__.py" else {}
            for alias in node.names:
                names.add(f"{base}.{alias.name}")  # a submodule, when it is one (checked below)
                if alias.name in lazy:
                    names.add(lazy[alias.name])
    return names


def import_closure(entry: str | Path) -> set[Path]:
    """Project files (absolute) that running `entry` may import, `entry` included."""
    entry = Path(entry).resolve()
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            for module in _with_parents(name):
                found = _module_file(module)
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def minimal_deps(files: set[Path]) -> list[str]:
    """Folders whose every .py file is in `files` (named once), plus the remaining files; repo-relative."""
    rel = {f.relative_to(ROOT) for f in files}
    out: set[Path] = set()
    for f in sorted(rel):
        folder = f.parent
        # the topmost folder that is complete
        best = None
        while folder != Path(".") and folder.parts[0] in PACKAGES:
            every = {p.relative_to(ROOT) for p in (ROOT / folder).rglob("*.py")}
            if every <= rel:
                best = folder
            folder = folder.parent
        out.add(best if best is not None else f)
    return sorted({str(p) for p in out if not any(q != p and p.is_relative_to(q) for q in out)})


if __name__ == "__main__":
    for entry in sys.argv[1:]:
        print(f"# {entry}")
        for dep in minimal_deps(import_closure(ROOT / entry)):
            print(f"      - {dep}")
