"""Where a `qlora` command may write: never over a user's files, never over its own inputs.

A command that writes a folder (`quantize`, `finetune`, `merge`) leaves a marker file, `qlora_output.json`,
naming the command, in what it writes. Before any work the command checks its output path:

- an empty string, or a file where a folder is written, is refused;
- a path equal to an input (the model folder, the adapter, the data file), inside one, or holding one
  is always refused: replacing it would destroy what the command reads;
- a folder that exists and is not empty is replaced only when it is a previous output of the same
  command (its marker says so); anything else — a folder of notes, another command's output — is
  refused unless the user passes `--overwrite`.

A file output (`eval --json`) is replaced only when it is a previous results file (recognised by a
caller-given test of its content), unless `--overwrite`. Every refusal is one line naming the path,
what it is, and what to do. The pipeline's own stage outputs are DVC's business (`qlora.atomic`
replaces them by design); this is for paths a user types.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER = "qlora_output.json"


class OutputKind(enum.Enum):
    """What wrote a folder (the marker's `command`)."""

    QUANTIZED = "qlora quantize"
    ADAPTER = "qlora finetune"
    FINETUNE_WORK = "qlora finetune (resumable state)"
    MERGED = "qlora merge"


class OutputRefused(ValueError):
    """An output path that would replace something the command did not make, or one of its inputs."""


def mark_output(folder: str | Path, kind: OutputKind) -> Path:
    """Writes the marker into `folder` (after the command wrote it)."""
    from qlora.atomic import write_json

    return write_json(Path(folder) / MARKER, {"command": kind.value, "format": 1})


def output_kind(folder: str | Path) -> OutputKind | None:
    """The command that wrote `folder`, by its marker; None: no readable marker."""
    marker = Path(folder) / MARKER
    try:
        command = json.loads(marker.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return next((k for k in OutputKind if k.value == command), None)


class Inputs:
    """The local paths a command reads, with what each is (for the messages)."""

    def __init__(self, items: Iterable[tuple[str, str | Path | None]] = ()) -> None:
        self.items: list[tuple[str, Path]] = []
        for what, path in items:
            self.add(what, path)

    def add(self, what: str, path: str | Path | None) -> None:
        """A path that exists locally (hub ids and missing paths are not inputs on this disk)."""
        if path is None or str(path) == "":
            return
        p = Path(path)
        if p.exists():
            self.items.append((what, p.resolve()))


def _check_path_text(path: str | Path, option: str) -> Path:
    if str(path).strip() == "":
        raise OutputRefused(f"{option}: expected a path, got an empty string")
    return Path(path)


def _check_not_an_input(path: Path, inputs: Inputs, option: str) -> None:
    target = path.resolve()
    for what, source in inputs.items:
        if target == source:
            raise OutputRefused(f"{option} {path}: is the {what} this command reads; choose another path")
        if target.is_relative_to(source):
            raise OutputRefused(f"{option} {path}: lies inside the {what} {source} this command reads; choose a path outside it")
        if source.is_relative_to(target):
            raise OutputRefused(f"{option} {path}: holds the {what} {source} this command reads; choose another path")


def _check_parents(path: Path, option: str) -> None:
    for parent in path.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputRefused(f"{option} {path}: {parent} is a file, not a folder")
            return


def check_folder_output(path: str | Path, kind: OutputKind, inputs: Inputs, *, overwrite: bool, option: str = "--out") -> Path:
    """Refuses (before any work) an output folder that would replace what `kind`'s command did not make.

    Args:
        path: the folder the command will write (replacing it whole).
        kind: the command; a folder whose marker names it is a previous output and may be replaced.
        inputs: what the command reads: never written over, whatever `overwrite` says.
        overwrite: the user's `--overwrite`: replace a non-empty folder that is not such an output.
        option: the argument's name, for the message.

    Returns:
        The path.

    Raises:
        OutputRefused: one line naming the path, what it is and what to do.
    """
    path = _check_path_text(path, option)
    _check_not_an_input(path, inputs, option)
    _check_parents(path, option)
    if path.is_symlink() and not path.exists():
        raise OutputRefused(f"{option} {path}: a broken symbolic link; remove it or choose another path")
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputRefused(f"{option} {path}: is a file; expected a folder to write (remove the file or choose another path)")
    found = output_kind(path)
    if found is kind or overwrite:
        return path
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return path
    if found is not None:
        raise OutputRefused(f"{option} {path}: holds a `{found.value}` output, not a `{kind.value}` one; pass --overwrite to replace it")
    shown = ", ".join(entries[:3]) + (f", ... ({len(entries)} entries)" if len(entries) > 3 else "")
    raise OutputRefused(f"{option} {path}: a folder that `{kind.value}` did not write ({shown}); pass --overwrite to replace it, "
                        "or choose a new or empty folder")  # fmt: skip


def check_file_output(path: str | Path, what: str, is_previous: Callable[[Path], bool], inputs: Inputs, *, overwrite: bool,
                      option: str) -> Path:  # fmt: skip
    """Refuses (before any work) an output file that would replace a file the command did not write.

    Args:
        what: what the command writes there ("results file"), for the message.
        is_previous: whether an existing file is a previous output of the command (by its content).

    Raises:
        OutputRefused: as `check_folder_output`.
    """
    path = _check_path_text(path, option)
    _check_not_an_input(path, inputs, option)
    _check_parents(path, option)
    if path.is_dir():
        raise OutputRefused(f"{option} {path}: is a folder; expected a {what} path")
    if path.exists() and not overwrite and not is_previous(path):
        raise OutputRefused(f"{option} {path}: a file that is not a previous {what}; pass --overwrite to replace it, or choose a new path")
    return path
