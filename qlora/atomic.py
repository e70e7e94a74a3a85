"""Atomic outputs: every file or folder the library or the pipeline writes appears whole or not at all.

`atomic_dir(path)` yields a temporary sibling folder (`.<name>.tmp-<pid>-<random>`) to fill; when the
block ends without an exception the contents are fsync'd and the folder renamed to `path` (replacing
an existing one); on any exception, KeyboardInterrupt included, the temporary folder is removed.
`atomic_file(path)` does the same for one file, `atomic_path(path)` for a writer that opens the file
itself. Temporary names carry the writer's pid, so leftovers of a process that was killed (SIGKILL
leaves no chance to clean up) are recognised and removed by the next writer of the same path
(`remove_stale`). Outputs get normal permissions (0o666 / 0o777 minus the umask), not the owner-only
ones of `tempfile`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_TMP = ".tmp-"
_OLD = ".old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_name(path: Path, marker: str = _TMP) -> Path:
    return path.with_name(f".{path.name}{marker}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(path: str | Path) -> list[Path]:
    """Removes the temporary siblings of `path` left by writers that no longer run.

    Returns:
        The removed paths.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for marker in (_TMP, _OLD):
        for leftover in path.parent.glob(f".{path.name}{marker}*"):
            pid_text = leftover.name[len(f".{path.name}{marker}") :].split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            _remove(leftover)
            removed.append(leftover)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def normal_permissions(path: str | Path) -> None:
    """Gives `path` the permissions an ordinary `open()` / `mkdir()` would: 0o666 (files) or 0o777
    (folders) minus the umask, execute bits kept where the owner had one. For files that writers such as
    safetensors create owner-only (0600)."""
    path = Path(path)
    mode = path.stat().st_mode
    if path.is_dir():
        wanted = 0o777
    else:
        wanted = 0o666 | (0o111 if mode & 0o100 else 0)
    os.chmod(path, wanted & ~_umask())


def _normal_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if not p.is_symlink():
            normal_permissions(p)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary folder that becomes `path` when the block succeeds.

    Args:
        path: the folder to create (its parent is created if needed).
        overwrite: replace an existing `path`; otherwise an existing one is an error.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False (nothing is written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    remove_stale(path)
    tmp = _temp_name(path)
    tmp.mkdir(mode=0o777 & ~_umask())
    try:
        yield tmp
        _normal_tree(tmp)  # safetensors writes 0600; an output is as readable as the user's other files
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            old = _temp_name(path, _OLD)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling path for a writer that opens files by name (e.g. `gguf.GGUFWriter`); when
    the block succeeds the file written there is fsync'd and renamed to `path`, otherwise it is removed.

    Raises:
        FileNotFoundError: the block ended without writing the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} (for {path})")
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Yields an open temporary file that replaces `path` when the block succeeds (fsync'd first)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Sorted keys and a trailing newline, so equal data gives equal bytes."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
