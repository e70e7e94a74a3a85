"""dvc.yaml declares what each stage really depends on: every project file its command can import
(computed from the code) and every params key its `plan` reads (recorded). A missing dependency would
let DVC call stale results up to date — the worst bug a reproducibility tool can have."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "stages"))

from stage_deps import import_closure  # noqa: E402

from qlora.pipeline.params import ReadRecorder, load_params  # noqa: E402


def resolve(dvc_yaml: dict) -> dict:
    """The stages as DVC expands them (foreach/matrix, ${...} from params.yaml)."""
    from dvc.parsing import DataResolver
    from dvc.repo import Repo

    return DataResolver(Repo(str(ROOT)), str(ROOT), copy.deepcopy(dvc_yaml)).resolve()["stages"]


def _covered(path: str, declared: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)


def code_problems(stages: dict) -> list[str]:
    problems = []
    for name, stage in stages.items():
        script = shlex.split(stage["cmd"])[1]
        needed = sorted(str(p.relative_to(ROOT)) for p in import_closure(ROOT / script))
        declared = [str(d) for d in stage.get("deps", [])]
        problems += [f"{name}: imports {p}, not declared" for p in needed if not _covered(p, declared)]
        code = [d for d in declared if d.startswith(("qlora", "stages"))]
        problems += [f"{name}: declares {d}, which it does not import" for d in code if not any(_covered(p, [d]) for p in needed)]
    return problems


def _stage_plan(script: str):
    module = importlib.import_module(Path(script).stem)
    return module.plan


def params_problems(stages: dict) -> list[str]:
    params = load_params(ROOT / "params.yaml")
    problems = []
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        recorder = ReadRecorder(params)
        job = _stage_plan(argv[1])(recorder, *argv[2:])
        declared = [str(p) for p in stage.get("params", [])]
        problems += [f"{name}: reads {key}, not declared" for key in sorted(recorder.reads) if not _covered_key(key, declared)]
        problems += [f"{name}: job holds a params view in {f}" for f in _views(job)]
    return problems


def _covered_key(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


def _views(obj, where="job") -> list[str]:
    if isinstance(obj, ReadRecorder):
        return [where]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [w for f in dataclasses.fields(obj) for w in _views(getattr(obj, f.name), f"{where}.{f.name}")]
    if isinstance(obj, (tuple, list)):
        return [w for i, v in enumerate(obj) for w in _views(v, f"{where}[{i}]")]
    return []


@pytest.fixture(scope="module")
def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


@pytest.fixture(scope="module")
def stages(dvc_yaml) -> dict:
    return resolve(dvc_yaml)


def test_every_stage_declares_the_code_it_imports(stages):
    assert code_problems(stages) == []


def test_every_stage_declares_the_params_it_reads(stages):
    assert params_problems(stages) == []


def test_sync_script_agrees_with_the_pipeline_files():
    from sync_dvc_deps import stale_files

    assert stale_files() == [], "run scripts/sync_dvc_deps.py"


def test_stage_imports_are_small(stages):
    """A stage does not pull the whole library through an eager package __init__."""
    closure = {str(p.relative_to(ROOT)) for p in import_closure(ROOT / "stages" / "report.py")}
    # (the quantizer is in: claim (j) is measured by the report, a zero-weight round trip per data type)
    heavy = ("qlora/nn", "qlora/models", "qlora/eval/mmlu", "qlora/eval/perplexity", "qlora/train/trainer")
    assert not any(p.startswith(heavy) for p in closure), closure  # the per-item format (eval/items) is what it reads
    prepare = {str(p.relative_to(ROOT)) for p in import_closure(ROOT / "stages" / "prepare_model.py")}
    assert not any(p.startswith(("qlora/nn", "qlora/kernels", "qlora/eval", "qlora/report")) for p in prepare), prepare


def _without(dvc_yaml: dict, stage: str, section: str, entry: str) -> dict:
    changed = copy.deepcopy(dvc_yaml)
    body = changed["stages"][stage].get("do", changed["stages"][stage])
    body[section] = [d for d in body[section] if str(d) != entry]
    assert len(body[section]) < len(dvc_yaml["stages"][stage].get("do", dvc_yaml["stages"][stage])[section]), entry
    return changed


@pytest.mark.parametrize(
    "stage, section, entry, expected",
    [
        # the mismatches found in review (issue 11): each must be caught
        ("quantize", "deps", "qlora/nn", "quantize@causal-nf4: imports qlora/nn/linear.py, not declared"),
        ("quantize", "deps", "qlora/kernels/blockwise.py", "quantize@causal-nf4: imports qlora/kernels/blockwise.py, not declared"),
        ("evaluate_causal", "deps", "qlora/__init__.py", "evaluate_causal@qlora_fp4: imports qlora/__init__.py, not declared"),
        ("evaluate_causal", "params", "quants.${item.quant}", "evaluate_causal@qlora_fp4: reads quants.fp4, not declared"),
        ("train_causal", "params", "lora", "train_causal@lora_bf16: reads lora, not declared"),
        ("evaluate_base", "params", "data.perplexity_windows", "evaluate_base@causal-nf4: reads data.perplexity_windows, not declared"),
    ],
)
def test_a_missing_dependency_is_caught(dvc_yaml, stage, section, entry, expected):
    stages = resolve(_without(dvc_yaml, stage, section, entry))
    problems = code_problems(stages) if section == "deps" else params_problems(stages)
    assert expected in problems, problems[:10]


def test_an_unused_code_dependency_is_caught(dvc_yaml):
    changed = copy.deepcopy(dvc_yaml)
    changed["stages"]["report"]["deps"].append("qlora/nn")
    assert "report: declares qlora/nn, which it does not import" in code_problems(resolve(changed))


@pytest.mark.parametrize("folder", ["", "findings"])
def test_the_committed_lock_describes_only_stages_the_pipeline_defines(folder):
    """DVC keeps a removed stage's lock entry; scripts/prune_dvc_lock.py drops it before a commit."""
    from dvc.parsing import DataResolver
    from dvc.repo import Repo

    lock = ROOT / folder / "dvc.lock"
    if not lock.exists():
        pytest.skip(f"no {lock.relative_to(ROOT)} committed")
    d = yaml.safe_load((ROOT / folder / "dvc.yaml").read_text())
    defined = set(DataResolver(Repo(str(ROOT)), str(ROOT / folder), d).resolve()["stages"])
    locked = set(yaml.safe_load(lock.read_text())["stages"])
    assert locked - defined == set(), "run scripts/prune_dvc_lock.py"
