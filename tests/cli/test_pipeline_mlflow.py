"""`qlora pipeline mlflow` becomes the MLflow server (exec): the PID it prints is the server's, SIGTERM to
it stops the whole server (no worker left, the port free), it listens on loopback unless told, and it
prints links that open the experiments on their runs (MLflow 3 starts in its GenAI view)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.mlflow_server import _free_port

ROOT = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _port_free(port: int) -> bool:
    """Nothing listens on it and a new server could bind it (as servers do, with SO_REUSEADDR: closed
    connections may linger in TIME_WAIT)."""
    if subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.strip():
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_to_the_reported_pid_stops_the_whole_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "QLORA_CACHE": str(tmp_path / "cache"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's qlora
    from qlora.pipeline.tracking import Tracking

    (tmp_path / "cache").mkdir()
    Tracking(f"sqlite:///{tmp_path / 'cache' / 'mlflow.db'}", "qlora-cli").log("finetune my-adapter")  # a store with runs to link to
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "qlora", "pipeline", "mlflow", "--port", str(port)], cwd=tmp_path, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
        text = log.read_text()
        assert f"pid {process.pid} " in text and f"http://127.0.0.1:{port}" in text, text
        assert f"--host 127.0.0.1 --port {port} --workers 1" in text
        assert f"  qlora-cli: http://127.0.0.1:{port}/#/experiments/1?workflowType=machine_learning\n" in text  # the runs view
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert {line.split()[3] for line in listening.splitlines()} == {f"127.0.0.1:{port}"}, listening  # loopback only
        children |= _descendants(process.pid)
        os.kill(process.pid, signal.SIGTERM)  # the reported PID: nothing else
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [p for p in children if _alive(p)]
        assert _port_free(port)
    finally:  # a failed run leaves nothing behind either
        for pid in (children | _descendants(process.pid)) if process.poll() is None else children:
            if _alive(pid) and str(port) in _cmdline(pid):  # still one of ours (not a reused pid)
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
