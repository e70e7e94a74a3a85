"""Rewrites the code dependencies of every stage in dvc.yaml from the imports of its command.

    .venv/bin/python scripts/sync_dvc_deps.py          # rewrite dvc.yaml (comments and order kept)
    .venv/bin/python scripts/sync_dvc_deps.py --check  # exit 1 and name the stages whose deps differ

A stage's code deps are the project files its `python stages/<x>.py` command can import
(`scripts/stage_deps.py`); its other deps (artifacts, metrics) are kept as written. The test suite
runs the check, so a new import can never leave a stage's results silently stale.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_deps import ROOT, import_closure, minimal_deps  # noqa: E402

CODE_PREFIXES = ("qlora/", "stages/", "qlora")


def _is_code(dep: str) -> bool:
    return dep.startswith(("qlora/", "stages/")) or dep == "qlora"


def stage_script(cmd: str) -> str:
    parts = cmd.split()
    if len(parts) < 2 or parts[0] != "python" or not parts[1].startswith("stages/"):
        raise ValueError(f"stage command {cmd!r} is not `python stages/<x>.py ...`")
    return parts[1]


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


PROFILE_DIRS = ("findings",)  # profiles with a pipeline of their own: <dir>/dvc.yaml + <dir>/params.yaml
SHARED_DEPS = ("data", "requirements")  # repository folders every profile reads (the user's own data files, the pinned inputs)
PROFILE_HEADER = """# GENERATED from ../dvc.yaml by scripts/sync_dvc_deps.py: do not edit (a test fails while it is stale).
# The same pipeline run in this folder with this folder's params.yaml (`experiment={profile}`, composed
# by scripts/compose_params.py): `dvc repro {profile}/dvc.yaml` (see the README).
"""


def _is_shared(dep: str) -> bool:
    return any(dep == d or dep.startswith(d + "/") for d in SHARED_DEPS)


def profile_text(root_text: str, profile: str) -> str:
    """The root pipeline for a profile folder: commands and code deps point one level up."""
    yaml = _yaml()
    doc = yaml.load(root_text)
    for stage in doc["stages"].values():
        body = stage.get("do", stage)
        body["cmd"] = body["cmd"].replace("python stages/", "python ../stages/", 1)
        body["deps"] = [f"../{d}" if _is_code(str(d)) or _is_shared(str(d)) else d for d in body.get("deps") or []]
    out = io.StringIO()
    yaml.dump(doc, out)
    lines = out.getvalue().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):  # the root's header comment
        lines.pop(0)
    return PROFILE_HEADER.format(profile=profile) + "".join(lines)


def synced_text(path: Path = ROOT / "dvc.yaml") -> tuple[str, list[str]]:
    """(the rewritten dvc.yaml, names of the stages whose code deps changed)."""
    yaml = _yaml()
    doc = yaml.load(path.read_text())
    changed = []
    for name, stage in doc["stages"].items():
        body = stage.get("do", stage)
        code = minimal_deps(import_closure(ROOT / stage_script(body["cmd"])))
        old = list(body.get("deps") or [])
        others = [d for d in old if not _is_code(str(d))]
        if [str(d) for d in old if _is_code(str(d))] != code:
            changed.append(name)
        body["deps"] = code + others
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue(), changed


def stale_files() -> list[str]:
    """The generated pipeline files that differ from what this script writes."""
    text, changed = synced_text()
    stale = ["dvc.yaml"] if changed else []
    for profile in PROFILE_DIRS:
        target = ROOT / profile / "dvc.yaml"
        if not target.exists() or target.read_text() != profile_text(text, profile):
            stale.append(f"{profile}/dvc.yaml")
    return stale


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        stale = stale_files()
        if stale:
            print(f"out of date: {', '.join(stale)}: run scripts/sync_dvc_deps.py", file=sys.stderr)
            raise SystemExit(1)
    else:
        text, changed = synced_text()
        (ROOT / "dvc.yaml").write_text(text)
        for profile in PROFILE_DIRS:
            (ROOT / profile).mkdir(exist_ok=True)
            (ROOT / profile / "dvc.yaml").write_text(profile_text(text, profile))
        print(f"updated: {', '.join(changed) or 'nothing'} (+ {', '.join(f'{p}/dvc.yaml' for p in PROFILE_DIRS)})")
