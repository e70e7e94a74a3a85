"""`benchmarks/gpu_check.py --dry-run`: the GPU script's code paths on CPU (interpreter, tiny shapes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora.quant.dtypes import DataType

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"correctness", "bandwidth", "linear", "training", "dispatch"}
GOALS = {"dequant_vs_copy", "dequant_vs_bnb", "linear_vs_bf16", "train_tokens_vs_peft_bnb", "train_peak_vs_peft_bnb"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc.stdout


@pytest.mark.slow
def test_dry_run_writes_every_section_without_errors(dry_run):
    report, md, _ = dry_run
    assert set(report["sections"]) == SECTIONS
    errors = {name: sec["error"][-500:] for name, sec in report["sections"].items() if "error" in sec}
    assert errors == {}
    meta = report["meta"]
    assert meta["dry_run"] is True and meta["device"] == "cpu"
    for key in ("device_name", "driver", "torch", "triton", "cuda", "bitsandbytes", "transformers", "peft", "command", "date"):
        assert key in meta
    assert md.startswith("# GPU check — DRY RUN") and "NOT measurements" in md


@pytest.mark.slow
def test_dry_run_checks_hold_and_goals_are_not_claimed(dry_run):
    report, _, stdout = dry_run
    s = report["sections"]
    correctness = s["correctness"]
    assert correctness["all_bit_exact"] and correctness["quantize_dequantize"]
    assert {row["dtype"] for row in correctness["quantize_dequantize"]} == {d.value for d in DataType if d.is_quantized}
    assert {row["double_quant"] for row in correctness["quantize_dequantize"] if row["dtype"] == "nf4"} == {False, True, "e4m4"}
    assert correctness["fused_ok"] and {f["direction"] for f in correctness["fused"]} == {"forward", "input-grad"}
    bnb = correctness["bitsandbytes"]
    if "skipped" not in bnb:  # bitsandbytes' CPU quantizer equals ours byte for byte
        assert bnb["rows"] and all(r["bytes_differ"] == 0 and r["dequant_of_bnb_state_values_differ"] == 0 for r in bnb["rows"])
    assert all(r["ours_s"] > 0 and r["copy_s"] > 0 and r["fraction_of_copy"] > 0 for r in s["bandwidth"]["rows"])
    assert s["linear"]["ratio"] > 0
    assert s["training"]["ours"]["tokens_per_s"] > 0 and s["training"]["ours"]["timed_steps"] >= 1
    assert "peft_bnb" in s["training"] or "peer_skipped" in s["training"]
    assert isinstance(s["dispatch"]["measured_threshold"], int) and s["dispatch"]["advice"].startswith("set FUSED_MAX_TOKENS = ")
    assert {g["goal"] for g in report["goals"]} == GOALS and all(g["met"] is None for g in report["goals"])
    assert "DRY RUN: not measurements" in stdout
