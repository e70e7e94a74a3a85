"""Data files that set-up fetched, pinned by version and sha256: where they are and that they are intact.

Some inputs come from registry packages that cannot be installed for their data: the `evals` wheel
(instruction tasks; its declared dependencies are a heavy stack we never import) is read as a zip, and
the `vadersentiment` sdist holds the human-rated sentences that its wheel leaves out. `scripts/setup.sh`
fetches both (`scripts/assets.py`, from `requirements/asset_files.txt`, hash-checked) into the
environment's `share/qlora-pipeline/assets` folder. Nothing here downloads: a missing or changed file
is an error that names it, what it is for and how to fetch it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

_CHUNK = 1 << 22
FETCH_HINT = "run `bash scripts/setup.sh` (or `python scripts/assets.py install`) to fetch the pinned assets"


@dataclasses.dataclass(frozen=True)
class AssetFile:
    """A registry file read as data.

    Attributes:
        requirement: the pinned requirement it is fetched by, as in requirements/asset_files.txt.
        filename: the file's name in the assets folder.
        sha256: its digest (the same as the requirement's --hash).
        purpose: what the pipeline reads from it.
    """

    requirement: str
    filename: str
    sha256: str
    purpose: str


EVALS_WHEEL = AssetFile(
    "evals==3.0.1.post1", "evals-3.0.1.post1-py3-none-any.whl",
    "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
    "instruction tasks (OpenAI evals registry, MIT; per-folder licence exceptions are left out)",
)  # fmt: skip
VADER_SDIST = AssetFile(
    "vadersentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
    "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "human-rated sentiment sentences (Hutto & Gilbert, ICWSM 2014; MIT)",
)  # fmt: skip
ASSET_FILES = (EVALS_WHEEL, VADER_SDIST)


def default_assets_dir() -> Path:
    """`<environment prefix>/share/qlora-pipeline/assets` (for the project's venv: `.venv/share/...`)."""
    return Path(sys.prefix) / "share" / "qlora-pipeline" / "assets"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def asset_path(asset: AssetFile, directory: str | Path | None = None, *, verify: bool = True) -> Path:
    """The path of `asset` in `directory` (default: `default_assets_dir()`), its sha256 checked.

    Raises:
        FileNotFoundError: the file is not there (the message says what it is for and how to fetch it).
        ValueError: the file's sha256 is not the pinned one.
    """
    folder = Path(directory) if directory is not None else default_assets_dir()
    path = folder / asset.filename
    if not path.is_file():
        raise FileNotFoundError(f"{asset.filename} ({asset.requirement}: {asset.purpose}) is missing from {folder}; {FETCH_HINT}")
    if verify and (digest := sha256_file(path)) != asset.sha256:
        raise ValueError(f"{path} ({asset.requirement}) has sha256 {digest}, expected the pinned {asset.sha256}; "
                         f"delete it and {FETCH_HINT}")  # fmt: skip
    return path
