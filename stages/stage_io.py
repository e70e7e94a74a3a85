"""Stage helpers: typed params, the MLflow URI, atomic outputs (temp file + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from qlora.config import PipelineConfig
from qlora.config_store import pipeline_config

ARTIFACTS = Path("artifacts")
METRICS = Path("metrics")


def load_params(section: str, path: str = "params.yaml") -> Any:
    params = OmegaConf.load(path)
    if section not in params:
        raise KeyError(f"{path} has no section {section!r} (sections: {sorted(params)})")
    return params[section]


def pipeline_params(path: str = "params.yaml") -> PipelineConfig:
    """params.yaml validated against the schemas (unknown keys and bad values fail here, named)."""
    return pipeline_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def tracking_uri(cfg: PipelineConfig) -> str:
    """MLflow URI: params' tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite under ~/.cache."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path.home() / ".cache" / "qlora-pipeline" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def fingerprint(*paths: str | Path) -> str:
    """sha256 over the names and bytes of the files under `paths` (files or folders, sorted walk)."""
    digest = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            digest.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()
