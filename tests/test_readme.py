"""README.md cannot drift from the code: every Python block runs (a tiny offline model in place of the hub
id it names), every `qlora ...` command line parses and composes its config, every `dvc exp run -S`
override composes with Hydra."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EMBEDDED = '"smollm2"'  # the model the README's Python names (an embedded one, offline): a tiny one's folder runs in its place


TORCHRUN = "started with: python -m torch.distributed.run"  # the first line of a block that runs as ranks


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def in_process_blocks() -> list[str]:
    return [b for b in blocks("python") if TORCHRUN not in b.splitlines()[0]]


def command_lines(program: str, *, inline: bool = False) -> list[list[str]]:
    """Every `program ...` line of the bash blocks (and inline code spans), as argv (comments dropped)."""
    found = []
    texts = [line for b in blocks("bash") for line in b.splitlines()] + (re.findall(r"`([^`\n]+)`", README) if inline else [])
    for text in texts:
        text = text.strip().replace(".venv/bin/", "")
        if text.startswith(program + " "):
            for part in text.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and argv[0] == program:
                    found.append(argv[1:])
    return found


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.tiny_text import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("readme") / "tiny-llama")


def test_the_readme_names_only_models_that_run_offline():
    """No hub id in the Python blocks or the command lines: the embedded models by name (they need no hub)."""
    from qlora.data.embedded import EMBEDDED_MODELS

    code = blocks("python")
    assert len(code) >= 3
    hub_ids = {m for b in code for m in re.findall(r"[\"']([\w.-]+/[\w.-]+)[\"']", b) if not m.endswith((".json", ".jsonl"))}
    assert hub_ids == set(), hub_ids
    assert all(f"qlora.model_dir({EMBEDDED})" in b for b in code if "from_pretrained(" in b)
    models = [a.split("=", 1)[1] for argv in command_lines("qlora") for a in argv if a.startswith("model=")]
    models += [argv[1] for argv in command_lines("qlora") if argv[0] in ("quantize", "eval")]
    assert models and set(models) <= set(EMBEDDED_MODELS), models


@pytest.mark.slow
def test_every_python_block_runs(tiny_model, tmp_path, monkeypatch):
    """In order, in one working directory (a later block reads what an earlier one saved)."""
    from torch import nn

    from qlora.nn.linear import QLoRALinear

    monkeypatch.chdir(tmp_path)
    namespaces = []
    for i, code in enumerate(in_process_blocks()):
        namespace: dict = {"__name__": f"readme_block_{i}"}
        exec(compile(code.replace(EMBEDDED, repr(str(tiny_model))), f"README.md python block {i}", "exec"), namespace)
        namespaces.append(namespace)
    quantized, trained, loaded = namespaces[:3]
    assert quantized["q"].storage_bits_per_param() == pytest.approx(4.127, abs=1e-3)
    assert repr(quantized["q"]).count("\n") == 0 and "4.127 bits/param" in repr(quantized["q"])
    assert trained["result"].steps == 2 and (tmp_path / "my-adapter" / "adapter_config.json").is_file()
    assert any(isinstance(m, QLoRALinear) for m in loaded["model"].modules())  # merge_and_unload left it as it was
    assert not any(isinstance(m, QLoRALinear) for m in loaded["merged"].modules())
    assert isinstance(loaded["peft_model"], nn.Module) and (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_the_torchrun_block_trains_on_two_ranks(tiny_model, tmp_path):
    """The "Scaling out" block, as the file it names, under torchrun with 2 gloo ranks (shortened run)."""
    import os
    import subprocess

    from safetensors.torch import load_file

    (code,) = [b for b in blocks("python") if TORCHRUN in b.splitlines()[0]]
    assert "max_steps=1875" in code and "grad_accum=8" in code
    code = code.replace(EMBEDDED, repr(str(tiny_model))).replace("max_steps=1875", "max_steps=2").replace("grad_accum=8", "grad_accum=1")
    (tmp_path / "finetune.py").write_text(code)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "finetune.py"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert adapter and all(v.isfinite().all() for v in adapter.values())
    assert (tmp_path / "ckpt").is_dir()


def test_every_qlora_command_line_parses_and_composes():
    from qlora.cli.compose import compose, find_config_dir, translate
    from qlora.cli.main import build_parser

    conf = find_config_dir(ROOT / "conf")
    parser = build_parser(conf)
    lines = command_lines("qlora")
    assert {argv[0] for argv in lines} >= {"quantize", "info", "finetune", "eval", "merge", "pipeline"}
    for argv in lines:
        args, extra = parser.parse_known_args(argv)
        assert all("=" in e for e in extra), argv
        if hasattr(args, "overrides"):
            model = [f"model={args.model}"] if hasattr(args, "model") else []
            compose(conf, translate(model + args.overrides + extra, conf))  # raises UsageError naming the bad override


def test_every_dvc_exp_run_override_composes():
    sys.path.insert(0, str(ROOT / "scripts"))
    from compose_params import compose_params

    runs = [argv for argv in command_lines("dvc", inline=True) if argv[:2] == ["exp", "run"]]
    assert runs
    for argv in runs:
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
        for override in overrides:
            key, _, values = override.partition("=")
            for value in values.split(","):  # a queued sweep: one experiment per value
                compose_params([f"{key}={value}"])
