"""qlora.atomic: outputs appear whole or not at all; leftovers of killed writers are removed."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from qlora.atomic import atomic_dir, atomic_file, remove_stale, write_json, write_text


def test_atomic_dir_creates_and_replaces(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_failure_leaves_old_output_and_no_temp(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_refuses_existing_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        with atomic_dir(tmp_path / "out", overwrite=False):
            pass


def test_permissions_are_normal_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_files_written_owner_only_inside_atomic_dir_get_normal_permissions(tmp_path):
    """safetensors creates its files 0600: an output folder's files must not stay unreadable to others."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))
            assert stat.S_IMODE((tmp / "model.safetensors").stat().st_mode) == 0o600  # what safetensors does
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "sub" / "run.sh", 0o700)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path / "d").as_posix(): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "d").rglob("*")}
    assert modes == {"model.safetensors": 0o644, "sub": 0o755, "sub/run.sh": 0o755}


def test_atomic_file_failure_keeps_old_content(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(KeyError):
        with atomic_file(target) as fh:
            fh.write("partial")
            raise KeyError("x")
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_file_rejects_append_mode(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        with atomic_file(tmp_path / "x", "a"):
            pass


def test_sigkill_mid_write_leaves_nothing_after_next_start(tmp_path):
    """A writer killed inside atomic_dir leaves a temp folder; the next writer of that path removes it."""
    target = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from qlora.atomic import atomic_dir
        with atomic_dir({str(target)!r}) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 1000)
            print("inside", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".out.tmp-")
    assert not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "ok").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_remove_stale_spares_live_writers(tmp_path):
    live = tmp_path / f".out.tmp-{os.getpid()}-abcd"
    dead = tmp_path / ".out.tmp-999999999-abcd"
    live.mkdir()
    dead.mkdir()
    assert remove_stale(tmp_path / "out") == [dead]
    assert live.exists()


def test_atomic_path_for_writers_that_open_the_file_themselves(tmp_path):
    from qlora.atomic import atomic_path

    target = tmp_path / "m.gguf"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(target):
            pass
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".m.gguf.tmp-")
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
