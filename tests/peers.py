"""The peer libraries the compatibility tests compare against (bitsandbytes, peft, datasets, gguf).

On a developer's machine a missing peer skips its tests; in CI (`CI` set, as `.ci/run` is run) every
peer is installed by `scripts/setup.sh`, so a missing one is an error, never a silent skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def peer(name: str) -> ModuleType:
    """`import name`; outside CI, skips the calling test (or module) when it is not installed."""
    if os.environ.get("CI", "").lower() in ("", "0", "false"):
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"CI requires the peer library {name!r} (scripts/setup.sh installs it): {error}") from error
