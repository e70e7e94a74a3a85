"""`prepare_data` runs from the pinned files alone: with every network connection and every pip call refused it
completes, and a second run writes the same bytes (so DVC re-runs nothing downstream)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent('''
    # sitecustomize: loaded at interpreter start; refuses and records network connections and pip calls
    import os, socket, subprocess
    _LOG = os.environ["NETWORK_ATTEMPTS_LOG"]
    def _record(what):
        with open(_LOG, "a") as fh:
            fh.write(what + "\\n")
    _connect = socket.socket.connect
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"connect {address!r}")
            raise OSError("network refused by the test")
        return _connect(self, address)
    socket.socket.connect = connect
    socket.socket.connect_ex = lambda self, address: connect(self, address)
    def getaddrinfo(host, *args, **kwargs):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror("name resolution refused by the test")
    socket.getaddrinfo = getaddrinfo
    _popen = subprocess.Popen.__init__
    def popen(self, args, *a, **k):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if "pip" in text.split() or " pip " in f" {text} " or "-m pip" in text:
            _record(f"subprocess {text}")
            raise OSError("pip refused by the test")
        return _popen(self, args, *a, **k)
    subprocess.Popen.__init__ = popen
''')


def _project(tmp_path: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.tiny_text import tiny_tokenizer

    work = tmp_path / "work"
    tiny_tokenizer().save_pretrained(work / "artifacts" / "models" / "causal")
    tiny_tokenizer(chat_template=False).save_pretrained(work / "artifacts" / "models" / "encoder")
    overrides = ["data.classification_train=40", "data.classification_test=20", "data.instruction_train=30", "data.instruction_test=12",
                 "data.instruction_heldout_tasks=3"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        (work / "params.yaml").write_text(OmegaConf.to_yaml(compose(config_name="config", overrides=overrides), resolve=True))
    return work


@pytest.mark.slow
def test_prepare_data_offline_and_repeatable(tmp_path):
    work = _project(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in ("pip", "pip3", "curl", "wget"):
        (fake_bin / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> \"$NETWORK_ATTEMPTS_LOG\"\nexit 1\n")
        (fake_bin / name).chmod(0o755)
    log = tmp_path / "attempts.log"
    env = {k: v for k, v in os.environ.items() if k not in ("QLORA_ASSETS", "HTTP_PROXY", "HTTPS_PROXY")}
    env.update(PYTHONPATH=str(blocker), PATH=f"{fake_bin}:{env['PATH']}", NETWORK_ATTEMPTS_LOG=str(log), HF_HUB_OFFLINE="1",
               PIP_NO_INDEX="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY="true",
               DVC_NO_ANALYTICS="1", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
    snapshots = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare_data.py")], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = sorted((work / "artifacts" / "data").iterdir())
        snapshots.append({p.name: p.read_bytes() for p in files} | {"metrics": (work / "metrics" / "data.json").read_bytes()})
    assert not log.exists(), log.read_text()  # nothing tried to reach the network or pip
    assert len(snapshots[0]) == 11 and snapshots[0] == snapshots[1]
    assert b'"vader_binary"' in snapshots[0]["cls_labels.json"]


def test_the_blocker_blocks(tmp_path):
    """The test above can fail: the same interpreter set-up records a connection and a pip call."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "attempts.log"
    code = ("import socket, subprocess, sys\n"
            "try: socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError: pass\n"
            "try: subprocess.run([sys.executable, '-m', 'pip', '--version'])\nexcept OSError: pass\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(blocker), NETWORK_ATTEMPTS_LOG=str(log))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    lines = log.read_text().splitlines()
    assert any(ln.startswith(("connect ", "getaddrinfo ")) for ln in lines), lines
    assert any(ln.startswith("subprocess ") and " pip " in ln for ln in lines), lines
