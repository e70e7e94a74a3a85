"""Issue 21's list of commands that destroyed a user's files, each refused before any work with one line,
every existing file left byte for byte as it was; and what stays allowed (a previous output of the same
command, --overwrite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora.cli.main import main
from qlora.pipeline.outputs import MARKER, OutputKind, mark_output

ROOT = Path(__file__).resolve().parents[2]
ALPACA = ROOT / "tests" / "data" / "fixtures" / "alpaca20.jsonl"


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `roots`."""
    found: dict[str, bytes | None] = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]) if root.is_dir() else [root]:
            found[str(p)] = p.read_bytes() if p.is_file() else None
    return found


@pytest.fixture
def no_work(monkeypatch):
    """Any model or data loading is a failure: a refusal must come before any work."""
    import qlora.data.user
    import qlora.pipeline.user_model

    def started(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(qlora.pipeline.user_model, "model_folder", started)
    monkeypatch.setattr(qlora.data.user, "load_user_data", started)


@pytest.fixture
def workspace(tmp_path, tiny_model_dir):
    """A user's folder: notes, a data file, a copy of a model, an adapter that `qlora finetune` wrote."""
    import shutil

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("do not lose me\n")
    (tmp_path / "my.jsonl").write_bytes(ALPACA.read_bytes())
    shutil.copytree(tiny_model_dir, tmp_path / "mymodel")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": str(tmp_path / "mymodel")}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    mark_output(adapter, OutputKind.ADAPTER)
    (tmp_path / "results.txt").write_text("my own results\n")
    return tmp_path


CASES = [
    # (argv with {w} the workspace, the start of the one-line error)
    (["quantize", "{w}/mymodel", "--out", "{w}/notes"], "qlora quantize: error: --out {w}/notes: a folder that `qlora quantize` did not "
                                                         "write (notes.txt); pass --overwrite"),
    (["quantize", "{w}/mymodel", "--out", "{w}/adapter"], "qlora quantize: error: --out {w}/adapter: holds a `qlora finetune` output, "
                                                           "not a `qlora quantize` one; pass --overwrite"),
    (["merge", "{w}/adapter", "--out", "{w}/adapter"], "qlora merge: error: --out {w}/adapter: is the adapter this command reads"),
    (["quantize", "{w}/mymodel", "--out", "{w}/my.jsonl"], "qlora quantize: error: --out {w}/my.jsonl: is a file; expected a folder"),
    (["quantize", "{w}/mymodel", "--out", "{w}/my.jsonl", "--overwrite"], "qlora quantize: error: --out {w}/my.jsonl: is a file"),
    (["eval", "{w}/mymodel", "--json", "{w}/my.jsonl"], "qlora eval: error: --json {w}/my.jsonl: a file that is not a previous results "
                                                         "file; pass --overwrite"),
    (["eval", "{w}/mymodel", "--json", "{w}/results.txt"], "qlora eval: error: --json {w}/results.txt: a file that is not a previous"),
    (["finetune", "--out", "{w}/my.jsonl", "data.path={w}/my.jsonl"], "qlora finetune: error: --out {w}/my.jsonl: is the data "
                                                                       "(data.path) this command reads"),
    (["finetune", "--out", "{w}/mymodel", "model={w}/mymodel", "data.path={w}/my.jsonl", "--overwrite"],
     "qlora finetune: error: --out {w}/mymodel: is the model folder this command reads"),
    (["eval", "{w}/mymodel", "--json", "{w}/mymodel/config.json", "--overwrite"],
     "qlora eval: error: --json {w}/mymodel/config.json: lies inside the model folder {w}/mymodel this command reads"),
    (["eval", "{w}/mymodel", "--json", "{w}/adapter/r.json", "--adapter", "{w}/adapter"],
     "qlora eval: error: --json {w}/adapter/r.json: lies inside the adapter"),
    (["quantize", "{w}/mymodel", "--out", "{w}/mymodel", "--overwrite"], "qlora quantize: error: --out {w}/mymodel: is the model folder"),
    (["quantize", "{w}/mymodel/", "--out", "{w}", "--overwrite"], "qlora quantize: error: --out {w}: holds the model folder {w}/mymodel"),
    (["merge", "{w}/adapter", "--out", "{w}/mymodel"], "qlora merge: error: --out {w}/mymodel: is the model folder this command reads"),
    (["quantize", "{w}/mymodel", "--out", "{w}/my.jsonl/sub"], "qlora quantize: error: --out {w}/my.jsonl/sub: {w}/my.jsonl is a file"),
    (["quantize", "{w}/mymodel", "--out", ""], "qlora quantize: error: --out: expected a path, got an empty string"),
    (["finetune", "--out", "", "data.path={w}/my.jsonl"], "qlora finetune: error: --out: expected a path, got an empty string"),
    (["merge", "{w}/adapter", "--out", ""], "qlora merge: error: --out: expected a path, got an empty string"),
    (["eval", "{w}/mymodel", "--json", ""], "qlora eval: error: --json: expected a path, got an empty string"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0]).replace("{w}/", "") for c in CASES])
def test_refused_before_any_work_and_nothing_changes(capsys, workspace, monkeypatch, no_work, argv, message):
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    w = str(workspace)
    code, out, err = run(capsys, *[a.replace("{w}", w) for a in argv], "--quiet", "--no-mlflow")
    assert code == 1 and out == "", (code, out, err)
    assert err.count("\n") == 1 and err.startswith(message.replace("{w}", w)), err
    assert snapshot(workspace) == before  # byte for byte, and nothing new (no .work folder, no temporary)


def test_a_refused_finetune_leaves_an_unmarked_work_folder_alone(capsys, workspace, no_work):
    work = workspace / "out.work"
    work.mkdir()
    (work / "mine.txt").write_text("a folder the user happened to name out.work\n")
    before = snapshot(workspace)
    code, _, err = run(capsys, "finetune", "--out", workspace / "out", f"data.path={workspace / 'my.jsonl'}", "--no-mlflow")
    assert code == 1 and f"--out (its resumable state) {work}: a folder that `qlora finetune (resumable state)` did not write" in err
    assert snapshot(workspace) == before


def test_previous_outputs_are_replaced_and_overwrite_replaces_the_rest(capsys, workspace):
    out = workspace / "q"
    argv = ["quantize", workspace / "mymodel", "--out", out, "quant=fp4", "--quiet", "--no-mlflow"]
    assert run(capsys, *argv)[0] == 0
    assert json.loads((out / MARKER).read_text())["command"] == "qlora quantize"
    (out / "config.json").write_text("{}")  # changed since: the re-run replaces the whole folder
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"

    code, _, err = run(capsys, "quantize", workspace / "mymodel", "--out", workspace / "notes", "--quiet", "--no-mlflow", "--overwrite")
    assert code == 0, err
    assert not (workspace / "notes" / "notes.txt").exists() and (workspace / "notes" / MARKER).is_file()

    empty = workspace / "empty"
    empty.mkdir()
    assert run(capsys, "quantize", workspace / "mymodel", "--out", empty, "--quiet", "--no-mlflow")[0] == 0
