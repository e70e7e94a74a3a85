"""What every stage shares: its arguments, params.yaml, where MLflow logs, and one-line errors.

A stage is `plan(params, *args) -> job` (reads params only: validated before any work; the dependency
test calls it with a recorder to see which params keys it reads) and `job.run(tracking)` (the work,
whose outputs are written atomically by the pipeline). This file is the only place besides the stages
that reads the environment.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# The repository's own `qlora`, not whichever checkout the environment's editable install points to: a
# queued DVC experiment runs in a temporary copy, and its stages must run that copy's code.
_REPO = str(Path(__file__).resolve().parent.parent)
if sys.path[:2] != [sys.path[0], _REPO]:
    sys.path.insert(1, _REPO)

from qlora.pipeline.tracking import Tracking  # noqa: E402


def args(argv: list[str], required: int, optional: int = 0, usage: str = "") -> list[str]:
    """The stage's positional arguments, or its usage and exit status 2."""
    if not required <= len(argv) <= required + optional or any(a in ("-h", "--help") for a in argv):
        print((usage or "").strip(), file=sys.stderr)
        raise SystemExit(0 if any(a in ("-h", "--help") for a in argv) else 2)
    return argv


def tracking() -> Tracking:
    """MLflow: $MLFLOW_TRACKING_URI (and $MLFLOW_EXPERIMENT_NAME), else a sqlite file under ~/.cache."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        db = cache_dir() / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    return Tracking(uri, os.environ.get("MLFLOW_EXPERIMENT_NAME", "qlora-pipeline"))


def assets_dir() -> Path | None:
    """The pinned data files fetched at set-up: $QLORA_ASSETS, else None (the environment's own folder)."""
    return Path(os.environ["QLORA_ASSETS"]) if os.environ.get("QLORA_ASSETS") else None


def cache_dir() -> Path:
    """Caches outside the repository (MLflow's database, joined GGUF files): $QLORA_CACHE, else ~/.cache/qlora-pipeline."""
    return Path(os.environ.get("QLORA_CACHE") or Path.home() / ".cache" / "qlora-pipeline")


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """User errors (a bad config key, a file that lies) end the stage with one line on stderr, status 1."""
    from qlora.checks import ConfigError

    try:
        yield
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
