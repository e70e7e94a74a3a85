"""Do verdicts (a) and (b) survive noise of one source-quantization step on the reference weights?
(issue 22: item 8 and "Robustness of each verdict"; re-quantization of GGUF-sourced models)

Each model's "BF16" reference is de-quantized from a 4-5-bit GGUF file, so its linear weights sit on the
source format's grid. For every model: the reference (as the pipeline's `prepare_model` stage makes it),
then draws of w' = w + step * u, u ~ Uniform[-1/2, 1/2), on every linear weight our quantization touches
(all linear layers but the head), step = the grid step of the weight's GGUF block (`source_noise.py`).
The reference and each draw are quantized to every data type of claims (a) and (b) with the project's
own path (`prepare_model` with the pipeline's QuantConfigs; BF16 rounds the whole model to bf16 as
`quantize_checkpoint` does), scored on the pipeline's perplexity windows (`perplexity_windows` over
`prepare_datasets`' perplexity text, the findings profile's data config) with `evaluate_perplexity`
under the pipeline's compute context, and (a), (b) are decided by `qlora.report.findings.assess`: the
same paired comparisons, margins and rules as reports/findings.md, once per draw.

    python benchmarks/source_noise_robustness.py [--models causal gemma3_270m qwen25_coder_05b]
        [--seeds 0 1 2] [--windows 64] [--window-tokens 256] [--width 1.0]
        [--params findings/params.yaml] [--work-dir DIR] [--out reports/source_noise_robustness]
        [--check-pipeline-path WINDOWS] [--setup-only] [--render-only --not-done TEXT --reading TEXT]

--work-dir holds the materialised models, the joined GGUF files and the prepared data (made when
missing; outside the repository). --check-pipeline-path also scores the unperturbed BF16 and NF4+DQ
rows through the pipeline's files (quantize_checkpoint, then load_for_inference) on that many windows
and records whether they equal the in-memory path's per-window NLL. Writes OUT.json (every number,
per-window NLL sums included) and OUT.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.source_noise` when run as a script

from benchmarks.source_noise import grid_residual, hf_source_steps, noise_generator, perturb, source_types  # noqa: E402
from qlora.config import Method, ModelKind, ModelSource, QuantConfig  # noqa: E402
from qlora.report.findings import Claim, Finding, Margins, assess  # noqa: E402
from qlora.report.labels import DataTypeLabel  # noqa: E402
from qlora.report.paired import t_interval  # noqa: E402
from qlora.report.records import EvalRecord, Evaluation  # noqa: E402

DATASET = "MMLU question stems"
REFERENCE = "reference"  # the draw label of the unperturbed model
# the data types claims (a) and (b) compare (BF16 for the ratios to it): the ablation's other types (Int8, FP8, NVFP4, ...)
# belong to claims (k) and (l) and would more than double each draw's time without entering a verdict here
CLAIM_QUANTS = ("bf16", "int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq")


@dataclasses.dataclass(frozen=True)
class Row:
    draw: str  # REFERENCE or "seed N"
    quant: str  # the quants key (bf16, int4, ...)
    evaluation: Evaluation
    seconds: float


def cpu_description() -> dict:
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return {"model_name": fields.get("Model name", "?").strip(), "cpus": fields.get("CPU(s)", "?").strip(),
            "flags": fields.get("Flags", "").strip(), "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip


def gguf_path(source: ModelSource, work_dir: Path) -> Path:
    from qlora.data import offline

    if source is ModelSource.SMOLLM2:
        return offline.smollm2_gguf_path()
    split = {ModelSource.GEMMA3_270M: offline.GEMMA3_270M_GGUF, ModelSource.QWEN25_CODER_05B: offline.QWEN25_CODER_05B_GGUF}[source]
    return offline.assemble_gguf(split, work_dir)


def model_folder(params, key: str, work_dir: Path) -> Path:
    from qlora.data.sources import materialise

    out = work_dir / "models" / key
    if not (out / "config.json").is_file():
        materialise(params.models[key], out, gguf_cache_dir=work_dir)
    return out


def perplexity_texts(params, work_dir: Path) -> list[str]:
    """The pipeline's perplexity text: `prepare_datasets` with the profile's data config (its seeded sample of
    MMLU stems depends on everything drawn before it, so the whole preparation runs once)."""
    from transformers import AutoTokenizer

    from qlora.data.prepare import prepare_datasets
    from qlora.data.prepared import PERPLEXITY_TEXT
    from qlora.pipeline.config import CAUSAL, ENCODER

    data = work_dir / "data"
    if not (data / PERPLEXITY_TEXT).is_file():
        prepare_datasets(params.data, AutoTokenizer.from_pretrained(model_folder(params, CAUSAL, work_dir)),
                         AutoTokenizer.from_pretrained(model_folder(params, ENCODER, work_dir)), None, data)  # fmt: skip
    return json.loads((data / PERPLEXITY_TEXT).read_text())["texts"]


def quantized(reference: torch.nn.Module, weights: dict[str, torch.Tensor], quant: QuantConfig) -> torch.nn.Module:
    """A copy of `reference` with `weights` in place, stored as `quant` the way the quantize stage stores it."""
    from qlora.models.surgery import prepare_model

    model = copy.deepcopy(reference)
    with torch.no_grad():
        for name, w in weights.items():
            model.get_parameter(name).copy_(w)
        if not quant.dtype.is_quantized:  # quantize_checkpoint saves the weights in bf16, evaluation loads them as fp32
            for p in model.parameters():  # (not model.to(): that would also round the rotary inv_freq buffer, which a load recomputes)
                p.copy_(p.to(torch.bfloat16))
    prepare_model(model, quant, None)
    if quant.dtype.is_quantized:  # quantize_checkpoint stores embeddings, norms, head and biases in stored_dtype(quant): round
        rounded_like_stored(model, quant)  # them the same way (Gemma's F32 norms and Q6_K/Q8_0 embedding are not bf16 values)
    return model.eval()


def rounded_like_stored(model: torch.nn.Module, quant: QuantConfig) -> None:
    """Rounds, in place, every floating tensor of `model.state_dict()` that is not a quantized layer's weight to
    `stored_dtype(quant)`, as `quantize_checkpoint` writes them, so that the in-memory model equals the loaded files."""
    from qlora.models.saving import stored_dtype
    from qlora.nn.linear import QLoRALinear

    quantized_layers = {n for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    dtype = stored_dtype(quant)
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            if (k.rsplit(".", 1)[0] not in quantized_layers or k.endswith(".bias")) and v.is_floating_point():
                v.copy_(v.to(dtype))


def release_memory() -> None:
    """Returns freed heap to the system between evaluations. glibc keeps what a model copy and its logits
    freed (~1.5-2 GB an evaluation for Qwen2.5-0.5B's 151k-token head, measured with /proc/self/statm); over
    a reference and 3 draws it grew past 24 GB and the kernel killed the run, while malloc_trim brings the
    process back to its set-up size after each evaluation."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc and platform.system() == "Linux":
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to return
            pass


def score(model: torch.nn.Module, quant: QuantConfig, windows: torch.Tensor, batch_size: int):
    from qlora.eval.perplexity import evaluate_perplexity
    from qlora.pipeline.evaluate import compute_context

    with compute_context(quant, model):
        return evaluate_perplexity(model, windows, batch_size=batch_size, progress=False)


def check_pipeline_path(folder: Path, reference, weights, quants: dict[str, QuantConfig], windows, batch_size: int) -> dict:
    """The unperturbed rows through the pipeline's files vs the in-memory path, window by window."""
    from qlora.models.loading import load_for_inference, quantize_checkpoint

    out = {}
    for key, quant in quants.items():
        with tempfile.TemporaryDirectory(prefix="qlora-source-noise-") as tmp:
            checkpoint = quantize_checkpoint(folder, ModelKind.CAUSAL_LM, quant, Path(tmp) / key)
            files = score(load_for_inference(checkpoint, ModelKind.CAUSAL_LM, quant=quant), quant, windows, batch_size)
        memory = score(quantized(reference, weights, quant), quant, windows, batch_size)
        a, b = [x.nll_sum for x in files.items.items], [x.nll_sum for x in memory.items.items]
        out[key] = {"windows": len(a), "identical": a == b, "max_abs_difference": max(abs(x - y) for x, y in zip(a, b))}
        release_memory()
        print(f"  pipeline path check {key}: {out[key]}", flush=True)
    return out


def run_model(params, key: str, args, texts: list[str]) -> dict:
    from transformers import AutoTokenizer

    from qlora.data.prepared import perplexity_windows
    from qlora.models.loading import load_base
    from qlora.models.surgery import linear_modules

    spec = params.models[key]
    started = time.time()
    folder = model_folder(params, key, args.work_dir)
    source = gguf_path(spec.source, args.work_dir)
    reference = load_base(folder, ModelKind.CAUSAL_LM).eval()
    names = [f"{m}.weight" for m in linear_modules(reference)]
    steps = hf_source_steps(source, reference, names)
    base = {n: reference.get_parameter(n).detach().clone() for n in names}
    types = source_types(source)
    by_type: dict[str, int] = {}
    for gguf_name, t in types.items():
        if gguf_name.startswith("blk.") and gguf_name.endswith(".weight") and t not in ("F32", "F16", "BF16"):
            by_type[t] = by_type.get(t, 0) + 1
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = perplexity_windows(tokenizer, texts, args.window_tokens, args.windows)
    quants = {q: params.quants[q] for q in params.ablation.base_quants if q in CLAIM_QUANTS}
    print(f"{spec.name}: {len(names)} linear weights, source types {by_type}, set-up {time.time() - started:.0f} s", flush=True)

    result = {"model": spec.name, "key": key, "command": "python " + " ".join(sys.argv), "width": args.width, "seeds": args.seeds,
              "gguf": source.name, "linear_weights": len(names), "source_types": by_type, "windows": int(windows.shape[0]),
              "window_tokens": int(windows.shape[1]), "draws": {}}  # fmt: skip
    if args.check_pipeline_path:
        picked = {q: quants[q] for q in ("bf16", "nf4_dq") if q in quants}
        result["pipeline_path_check"] = check_pipeline_path(folder, reference, base, picked, windows[: args.check_pipeline_path],
                                                            params.eval.batch_size)  # fmt: skip
    result["grid_residual"] = max(grid_residual(base[n], steps[n]) for n in names)  # ~0: every weight on its steps' grid
    result["step_over_weight_rms"] = float(torch.cat([steps[n].flatten() for n in names]).double().pow(2).mean().sqrt()) / math.sqrt(
        sum(float(base[n].double().pow(2).sum()) for n in names) / sum(base[n].numel() for n in names))
    if args.setup_only:  # the GGUF mapping is checked (hf_source_steps) and the steps measured; nothing is evaluated
        result["survival"], result["seconds"] = {}, round(time.time() - started)
        return result
    draws: list[tuple[str, int | None]] = [(REFERENCE, None)] + [(f"seed {s}", s) for s in args.seeds]
    for draw, seed in draws:
        weights = base if seed is None else {n: perturb(base[n], steps[n], noise_generator(seed, n), width=args.width) for n in names}
        change = torch.cat([(weights[n] - base[n]).flatten() for n in names])
        rms_w = math.sqrt(sum(float(base[n].double().pow(2).sum()) for n in names) / change.numel())
        rows = []
        for q, quant in quants.items():
            t = time.time()
            res = score(quantized(reference, weights, quant), quant, windows, params.eval.batch_size)
            record = EvalRecord.of(res, model=spec.name, quant=DataTypeLabel.of(quant), method=Method.NONE, dataset=DATASET)
            rows.append(Row(draw, q, Evaluation(record, res.items), time.time() - t))
            print(f"  {draw} {q}: perplexity {res.score.value:.4f} ({time.time() - t:.0f} s)", flush=True)
            del res
            release_memory()
        findings = assess([r.evaluation for r in rows], [])
        result["draws"][draw] = {
            "seed": seed,
            "noise_rms_over_weight_rms": float(change.double().pow(2).mean().sqrt()) / rms_w,
            "noise_max_abs_over_step": max(float(((weights[n] - base[n]).abs() / steps[n].clamp_min(1e-30)).max()) for n in names),
            "perplexity": {r.quant: r.evaluation.record.value for r in rows},
            "seconds": {r.quant: round(r.seconds, 1) for r in rows},
            "nll_sums": {r.quant: [x.nll_sum for x in r.evaluation.items.items] for r in rows},
            "item_ids": [x.id for x in rows[0].evaluation.items.items],
            "verdicts": {f.claim.value: finding_json(f) for f in findings if f.claim in (Claim.A, Claim.B)},
        }
    result["survival"] = survival(result["draws"])
    result["seconds"] = round(time.time() - started)
    return result


def finding_json(f: Finding) -> dict:
    return {"verdict": f.verdict.value,
            "parts": [{"label": p.label, "verdict": p.verdict.value, "estimate": p.comparison.estimate, "ci_low": p.comparison.ci_low,
                       "ci_high": p.comparison.ci_high, "n": p.comparison.n, "mde": p.comparison.mde, "method": p.comparison.method}
                      for p in f.parts]}  # fmt: skip


def survival(draws: dict) -> dict:
    """Per claim and per part: the reference's verdict, each draw's, whether all draws agree with the
    reference, and the ratio's mean with a t interval over the draws (on the log scale)."""
    ref = draws[REFERENCE]["verdicts"]
    noisy = [d for k, d in draws.items() if k != REFERENCE]
    out = {}
    for claim, finding in ref.items():
        parts = []
        for i, part in enumerate(finding["parts"]):
            estimates = [d["verdicts"][claim]["parts"][i]["estimate"] for d in noisy]
            entry = {"label": part["label"], "reference": part["verdict"], "draws": [d["verdicts"][claim]["parts"][i]["verdict"] for d in noisy],
                     "estimates": estimates}  # fmt: skip
            entry["survives"] = bool(noisy) and all(v == part["verdict"] for v in entry["draws"])
            if len(estimates) >= 2:
                mean, low, high = t_interval([math.log(e) for e in estimates])
                entry["mean_over_draws"], entry["t_interval_over_draws"] = math.exp(mean), [math.exp(low), math.exp(high)]
            parts.append(entry)
        verdicts = [d["verdicts"][claim]["verdict"] for d in noisy]
        out[claim] = {"reference": finding["verdict"], "draws": verdicts, "survives": bool(noisy) and all(v == finding["verdict"] for v in verdicts),
                      "parts": parts}  # fmt: skip
    return out


SHORT = {"bf16": "BF16", "int4": "Int4", "fp4": "FP4 (E2M1)", "fp4_e3m0": "FP4 (E3M0)", "nf4": "NF4", "nf4_dq": "NF4+DQ"}


def _ci(p: dict) -> str:
    return f"{p['estimate']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]"


def markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = ["# Source-noise robustness of claims (a) and (b): re-quantization of GGUF-sourced models", "",
             "Every model here is **re-quantized from a GGUF file**: its \"BF16\" reference is the float de-quantization of a 4-5-bit "
             "GGUF (SmolLM2: Q4_1; Gemma-3-270M and Qwen2.5-Coder-0.5B: Q4_K_M mixes), so its linear weights sit on the source format's "
             "grid. Each draw moves every linear weight that our quantization touches (all linear layers but the head) by "
             f"u x step, u ~ Uniform[-{report['width'] / 2:g}, {report['width'] / 2:g}) i.i.d., step = the grid step of the weight's GGUF block "
             "(Q4_1, Q5_0, Q8_0: the block's d per 32 weights; Q4_K: d x sc_j per sub-block of 32; Q6_K: d x sc_j per 16; "
             "`benchmarks/source_noise.py`). Why uniform over one step: ggml rounds each weight to the nearest code of its block, "
             "so the file only says that the original weight lay within half a step of its grid point; a uniform draw over that cell is "
             "another de-quantization of the same file that is as far from the original as the file's rounding (variance step^2/12) "
             "but off the grid. Then, for the reference and each draw, every data type of claims (a) and (b) with the project's own "
             "quantize path, perplexity on the pipeline's windows, and the verdicts by `qlora.report.findings.assess` (the paired "
             "comparisons, margins and rules of reports/findings.md).", "",
             f"CPU: {cpu['model_name']}, {cpu['cpus']} CPUs (shared), torch {cpu['torch']}; "
             f"bf16 compute (ComputeDtype.NATIVE) where the flags include avx512_bf16/amx: "
             f"{'yes' if 'avx512_bf16' in cpu['flags'] or 'amx' in cpu['flags'] else 'no'}. Flags: `{cpu['flags']}`  ",
             "Windows: the findings profile's perplexity text and data seed, cut by each model's tokenizer (`perplexity_windows`; "
             f"counts per model below). Margins: {Margins().describe()}.", ""]  # fmt: skip
    if report.get("reading"):
        lines += ["## Reading", "", report["reading"], ""]
    lines += ["## Does each verdict survive?", "",
              "| model | claim | reference verdict | verdicts over draws | survives |", "|---|---|---|---|---|"]  # fmt: skip
    for m in report["models"]:
        if not m["draws"]:
            lines.append(f"| {m['model']} | (a), (b) | not evaluated (set-up only, below) | – | – |")
        for claim, s in m["survival"].items():
            lines.append(f"| {m['model']} | ({claim}) | {s['reference']} | {', '.join(s['draws'])} | {'yes' if s['survives'] else '**no**'} |")
    for m in [m for m in report["models"] if m["draws"]]:
        lines += ["", f"## {m['model']}", "", f"GGUF `{m['gguf']}`; {m['linear_weights']} linear weights perturbed, by source type: "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(m['source_types'].items()))}; {m['windows']} windows x {m['window_tokens']} "
                  f"tokens; {'rms step / rms weight ' + format(m['step_over_weight_rms'], '.4f') + '; ' if 'step_over_weight_rms' in m else ''}"
                  f"draws: seeds {', '.join(map(str, m['seeds']))}. "
                  f"Command: `{m['command']}`", ""]  # fmt: skip
        quants = list(next(iter(m["draws"].values()))["perplexity"])
        ref_ppl = m["draws"][REFERENCE]["perplexity"]
        lines += ["| draw | noise rms / weight rms | " + " | ".join(SHORT.get(q, q) for q in quants) + " |",
                  "|---|---:|" + "---:|" * len(quants)]  # fmt: skip
        for draw, d in m["draws"].items():
            cells = [f"{d['perplexity'][q]:.3f}" + ("" if draw == REFERENCE else f" ({100 * (d['perplexity'][q] / ref_ppl[q] - 1):+.1f}%)") for q in quants]
            lines.append(f"| {draw} | {d['noise_rms_over_weight_rms']:.4f} | " + " | ".join(cells) + " |")
        lines += ["", "Perplexity (change against the unperturbed reference). Paired ratios with 95% paired-bootstrap intervals "
                      f"over the {m['windows']} windows, verdicts by the findings rules:", "",
                  "| draw | NF4 / FP4 (E2M1) | NF4 / FP4 (E3M0) | NF4 / Int4 | (a) | NF4+DQ / NF4 | (b) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for draw, d in m["draws"].items():
            a, b = d["verdicts"]["a"], d["verdicts"]["b"]
            lines.append(f"| {draw} | " + " | ".join(_ci(p) for p in a["parts"]) + f" | {a['verdict']} | {_ci(b['parts'][0])} | {b['verdict']} |")
        lines.append("")
        for claim, s in m["survival"].items():
            for p in s["parts"]:
                if "mean_over_draws" in p:
                    low, high = p["t_interval_over_draws"]
                    lines.append(f"- ({claim}) {p['label']}: ratio per draw {', '.join(f'{e:.3f}' for e in p['estimates'])}; geometric mean "
                                 f"{p['mean_over_draws']:.3f}, t interval over {len(p['estimates'])} draws [{low:.3f}, {high:.3f}]; "
                                 f"reference verdict {p['reference']}, {'survives' if p['survives'] else 'does not survive'}")  # fmt: skip
        if "pipeline_path_check" in m:
            checks = "; ".join(f"{SHORT.get(q, q)}: {c['windows']} windows, identical {c['identical']} (max |diff| {c['max_abs_difference']:.3g})"
                               for q, c in m["pipeline_path_check"].items())  # fmt: skip
            lines.append(f"- In-memory quantization vs the pipeline's files (quantize_checkpoint + load_for_inference), unperturbed: {checks}")
        secs = [s for d in m["draws"].values() for s in d["seconds"].values()]
        lines.append(f"- {len(secs)} evaluations, {min(secs):.0f}-{max(secs):.0f} s each; the model's run took {m['seconds'] / 60:.1f} min")
    for m in [m for m in report["models"] if not m["draws"]]:
        lines += ["", f"## {m['model']}: set-up only (not evaluated)", "",
                  f"GGUF `{m['gguf']}`; {m['linear_weights']} linear weights mapped to their GGUF tensors (each de-quantized tensor, "
                  f"after transformers' processor, equals the loaded weight bit for bit), by source type: "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(m['source_types'].items()))}; rms step / rms weight "
                  f"{m['step_over_weight_rms']:.4f}; every weight lies on its steps' grid (largest |k - round(k)| of "
                  f"k = (w - group min) / step over groups of 16: {m['grid_residual']:.1e}). Command: `{m['command']}`"]  # fmt: skip
    lines += ["", "Not done here: " + report["not_done"], ""]
    return "\n".join(lines)


def main() -> None:
    from qlora.pipeline.params import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["causal"], help="keys of params.models (causal = SmolLM2)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--window-tokens", type=int, default=256)
    ap.add_argument("--width", type=float, default=1.0, help="noise width in source steps (1: uniform over [-step/2, step/2))")
    ap.add_argument("--params", type=Path, default=Path("findings/params.yaml"))
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "qlora-source-noise")
    ap.add_argument("--out", type=Path, default=Path("reports/source_noise_robustness"))
    ap.add_argument("--check-pipeline-path", type=int, default=0, metavar="WINDOWS")
    ap.add_argument("--not-done", default="", help="a sentence for the report: what was left out")
    ap.add_argument("--setup-only", action="store_true", help="map and check the source steps, evaluate nothing")
    ap.add_argument("--reading", default="", help="with --render-only: the report's reading of the numbers (markdown)")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json (with --not-done, --reading), run nothing")
    args = ap.parse_args()
    json_path = args.out.with_suffix(".json")
    if args.render_only:
        report = json.loads(json_path.read_text())
        report["not_done"] = args.not_done or report["not_done"]
        report["reading"] = args.reading or report.get("reading", "")
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
        return
    torch.manual_seed(0)
    params = load_params(args.params)
    texts = perplexity_texts(params, args.work_dir)
    # a model run earlier with the same noise width keeps its results (models can be run one at a time)
    kept = json.loads(json_path.read_text())["models"] if json_path.is_file() else []
    kept = [m for m in kept if m["key"] not in args.models and m["width"] == args.width]
    done = []
    for key in args.models:
        done.append(run_model(params, key, args, texts))
        order = {k: i for i, k in enumerate(params.models)}
        report = {"label": "re-quantization of GGUF-sourced models", "cpu": cpu_description(), "width": args.width,
                  "margins": dataclasses.asdict(Margins()), "not_done": args.not_done,
                  "models": sorted(kept + done, key=lambda m: order.get(m["key"], 99))}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
