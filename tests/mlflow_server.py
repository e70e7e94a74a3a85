"""An MLflow tracking server on a fresh sqlite database, for the tests that talk to one over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(subcommand: str, db: Path, artifacts: Path, *extra: str, cwd: Path | None = None) -> Iterator[str]:
    """`python -m mlflow <subcommand>` ("ui" or "server") on `db`, artifacts in `artifacts`; yields its base URL
    once /health answers, and stops its whole process group (the server and its workers) on exit."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "mlflow", subcommand, "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
               str(artifacts), *extra, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log = db.with_suffix(".log")
    with open(log, "wb") as stderr:  # a file, not a pipe: a chatty server cannot fill it and stall
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow {subcommand} did not start (exit {process.poll()}): {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
