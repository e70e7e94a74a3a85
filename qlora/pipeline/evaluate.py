"""Evaluation runs: a base model per data type (Table 2: perplexity; zero-shot MMLU), a fine-tuned causal
row (k-shot MMLU, RougeL, held-out instruction loss) and an encoder row (classification accuracy).

Each writes its records (metrics/...) and its per-item scores (items/...), keyed by stable item ids so
the report pairs rows on the same items. The DVC stages and the Hydra sweep both call these.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from qlora.config import EvalConfig, Method, ModelKind, QuantConfig
from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, ENCODER, PipelineConfig, main_method
from qlora.pipeline.params import lookup, pick, whole
from qlora.pipeline.quantize import quant_params
from qlora.pipeline.tracking import Tracking, base_row, stage_row


def _write(scored: list, metrics_path: Path, items_dir: Path) -> list:
    """Writes the records (metrics) and, atomically as one folder, the per-item results of `scored`:
    (EvalResult, EvalRecord) pairs. Returns the records."""
    from qlora.atomic import atomic_dir, write_json
    from qlora.report.records import dump_records, items_filename

    with atomic_dir(items_dir) as tmp:
        for result, record in scored:
            result.items.save(tmp / items_filename(record))
    records = [record for _, record in scored]
    write_json(metrics_path, dump_records(records))
    return records


def compute_context(quant: QuantConfig, model):
    """Autocast to the quant config's compute dtype where it is bf16 (`ComputeDtype.NATIVE` on a CPU with
    AVX-512 BF16 or AMX; CUDA): the unquantized parts (attention, norms, head) compute in it too."""
    import contextlib

    import torch

    device = next(model.parameters()).device
    dtype = quant.compute_dtype.resolve(device)
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def _record(result, model: str, quant: QuantConfig, method: Method, dataset: str, seed: int | None = None, variant: str = ""):
    from qlora.report.labels import DataTypeLabel
    from qlora.report.records import EvalRecord

    from qlora.report.labels import BF16

    label = BF16 if method is Method.FULL else DataTypeLabel.of(quant)
    return result, EvalRecord.of(result, model=model, quant=label, method=method, dataset=dataset, seed=seed, variant=variant)


@dataclasses.dataclass(frozen=True)
class BaseEvalJob:
    """A base model stored as one data type, without training: perplexity and zero-shot MMLU."""

    model_key: str
    model_name: str
    quant_name: str
    quant: QuantConfig
    windows: int  # data.perplexity_windows
    window_tokens: int  # data.perplexity_window_tokens
    eval: EvalConfig  # base_mmlu_questions, batch_size, seed
    mmlu: bool = True  # zero-shot MMLU too (ablation.base_mmlu_quants)

    def run(self, tracking: Tracking, *, progress: bool = True) -> list:
        started = time.time()  # the MLflow run's start
        from transformers import AutoTokenizer

        from qlora.data.mmlu import load_mmlu
        from qlora.data.prepared import PERPLEXITY_TEXT, perplexity_windows
        from qlora.eval.mmlu import MMLUScoring, evaluate_mmlu
        from qlora.eval.perplexity import evaluate_perplexity
        from qlora.models.loading import load_for_inference

        checkpoint = paths.quantized_dir(self.model_key, self.quant_name)
        model = load_for_inference(checkpoint, ModelKind.CAUSAL_LM, quant=self.quant)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        texts = json.loads((paths.data_dir() / PERPLEXITY_TEXT).read_text())["texts"]
        windows = perplexity_windows(tokenizer, texts, self.window_tokens, self.windows)
        with compute_context(self.quant, model):
            ppl = evaluate_perplexity(model, windows, batch_size=self.eval.batch_size, progress=progress)
            mmlu = None
            if self.mmlu:
                # Table 2's rule is the choice log-likelihood, which rotating the choices does not serve (rotations
                # debias the letter rule only, at ~2.4x the cost): one prompt per question, no letter accuracy
                mmlu = evaluate_mmlu(model, tokenizer, load_mmlu(), None, k=0, limit=self.eval.base_mmlu_questions or None,
                                     seed=self.eval.seed, batch_size=self.eval.batch_size, scoring=MMLUScoring.CHOICE,
                                     rotations=False, progress=progress)  # fmt: skip
        scored = [_record(ppl, self.model_name, self.quant, Method.NONE, "MMLU question stems")]
        if mmlu is not None:
            scored.append(_record(mmlu, self.model_name, self.quant, Method.NONE, "MMLU test (0-shot)"))
        records = _write(scored, paths.base_metrics(self.model_key, self.quant_name), paths.base_items(self.model_key, self.quant_name))
        numbers = {"perplexity": ppl.score.value} | ({"mmlu_zero_shot": mmlu.score.value} if mmlu else {})
        tracking.log(f"evaluate base {self.model_key} {self.quant_name}",
                     params={"model": self.model_name, "method": Method.NONE.value, **quant_params(self.quant)},
                     metrics=numbers | {"perplexity_tokens": ppl.score.n} | ({"mmlu_zero_shot_n": mmlu.score.n} if mmlu else {}),
                     tags={"stage": "evaluate_base", "model": self.model_name, "quant": self.quant.label},
                     row=base_row(self.model_key, self.model_name, self.quant_name, self.quant),
                     row_metrics=numbers, config=self, started=started)  # fmt: skip
        return records


def plan_base_eval(params: PipelineConfig, model_key: str, quant_name: str) -> BaseEvalJob:
    model = lookup(params.models, model_key, "models")
    if model.kind is not ModelKind.CAUSAL_LM:
        from qlora.checks import ConfigError

        raise ConfigError("model", model_key, f"a causal LM (models.{model_key}.kind is {model.kind.name})")
    only = params.ablation.base_mmlu_quants
    return BaseEvalJob(model_key, model.name, quant_name, lookup(params.quants, quant_name, "quants"),
                       params.data.perplexity_windows, params.data.perplexity_window_tokens,
                       pick(params.eval, EvalConfig, ("base_mmlu_questions", "batch_size", "seed")), not only or quant_name in only)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CausalEvalJob:
    """A causal row after fine-tuning — once per trained seed — or the untuned base: k-shot MMLU, RougeL and
    held-out NLL (items carry their held-out task; NLL with and without the template's tokens)."""

    row: str  # a key of ablation.causal, "untuned_<quant>" or "main"
    model_name: str
    method: Method
    quant: QuantConfig
    eval: EvalConfig
    checkpoint: Path
    adapters: tuple[tuple[int | None, Path | None], ...]  # (seed or None, adapter or None: the untuned base)
    metrics_path: Path
    items_path: Path  # a folder: one per-item file per record
    variant: str = ""  # the row's RunSpec.variant
    mmlu: bool = True  # the row's RunSpec.mmlu: k-shot MMLU too

    def run(self, tracking: Tracking, *, progress: bool = True) -> list:
        started = time.time()  # the MLflow run's start
        from transformers import AutoTokenizer

        from qlora.data.mmlu import load_fewshot_pool, load_mmlu
        from qlora.data.prepared import INSTRUCT_HELDOUT, INSTRUCT_HELDOUT_TASKS, INSTRUCT_TEST, read_example_tasks
        from qlora.data.tokenization import TokenizedDataset
        from qlora.eval.batches import pad_id
        from qlora.eval.heldout import evaluate_heldout_nll
        from qlora.eval.mmlu import evaluate_mmlu
        from qlora.eval.rouge import evaluate_rouge
        from qlora.models.loading import load_for_inference

        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        ev = self.eval
        test_file = json.loads((paths.data_dir() / INSTRUCT_TEST).read_text())
        test, source = test_file["examples"][: ev.rouge_examples], test_file.get("source", "held-out instruction tasks")
        heldout = TokenizedDataset.load(paths.data_dir() / INSTRUCT_HELDOUT)
        tasks, tail = read_example_tasks(paths.data_dir() / INSTRUCT_HELDOUT_TASKS)
        n = min(ev.heldout_examples, len(heldout))
        scored = []
        for seed, adapter in self.adapters:
            model = load_for_inference(self.checkpoint, ModelKind.CAUSAL_LM, adapter, quant=self.quant)
            with compute_context(self.quant, model):
                mmlu = None
                if self.mmlu:
                    mmlu = evaluate_mmlu(model, tokenizer, load_mmlu(), load_fewshot_pool(), k=ev.mmlu_shots,
                                         limit=ev.mmlu_questions or None, seed=ev.seed, batch_size=ev.batch_size, progress=progress)  # fmt: skip
                rouge = evaluate_rouge(model, tokenizer, [t["prompt"] for t in test], [t["references"] for t in test],
                                       max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                       groups=[t["subtask"] for t in test], progress=progress)  # fmt: skip
                nll = evaluate_heldout_nll(model, [heldout[i] for i in range(n)], pad_token_id=pad_id(tokenizer),
                                           batch_size=ev.batch_size, groups=tasks[:n], template_tail=tail[:n], progress=progress)  # fmt: skip
            kw = {"seed": seed, "variant": self.variant}
            if mmlu is not None:
                scored.append(_record(mmlu, self.model_name, self.quant, self.method, f"MMLU test ({ev.mmlu_shots}-shot)", **kw))
            scored += [_record(rouge, self.model_name, self.quant, self.method, source, **kw),
                       _record(nll, self.model_name, self.quant, self.method, f"{source} (responses)", **kw)]  # fmt: skip
        records = _write(scored, self.metrics_path, self.items_path)
        means: dict[str, list[float]] = {}
        for r in records:
            means.setdefault(r.task.value, []).append(r.value)
        headline = {k: sum(v) / len(v) for k, v in means.items()}
        tracking.log(f"evaluate causal {self.row}", params={"model": self.model_name, "method": self.method.value, **quant_params(self.quant)},
                     metrics=headline | {f"{r.task.value}_n": r.n for r in records} | {"seeds": len(self.adapters)},
                     tags={"stage": "evaluate", "role": CAUSAL, "run": self.row},
                     row=stage_row(CAUSAL, self.row, self.method, self.quant, self.model_name, self.variant),
                     row_metrics=headline, config=self, started=started)  # fmt: skip
        return records


def plan_causal_eval(params: PipelineConfig, run: str) -> CausalEvalJob:
    model = lookup(params.models, CAUSAL, "models")
    untuned = paths.untuned_quant(run)
    variant, mmlu = "", True
    if run == paths.MAIN:
        quant, quant_name = whole(params.quant), paths.MAIN
        method = main_method(quant)
        adapters: tuple = ((None, paths.adapter_dir(CAUSAL, run)),)
    elif untuned is not None:
        from qlora.checks import ConfigError

        if untuned not in params.ablation.untuned_quants:
            raise ConfigError("run", run, f"untuned_<one of ablation.untuned_quants: {', '.join(params.ablation.untuned_quants)}>")
        quant_name, method = untuned, Method.NONE
        quant = lookup(params.quants, quant_name, "quants")
        adapters = ((None, None),)
    else:
        spec = lookup(params.ablation.causal, run, "ablation.causal")
        quant_name, method = spec.quant, spec.method
        quant = lookup(params.quants, spec.quant, f"ablation.causal.{run}.quant")
        adapters = tuple((seed, paths.seed_dir(paths.adapter_dir(CAUSAL, run), seed)) for seed in params.ablation.causal_seeds)
        variant, mmlu = spec.variant, spec.mmlu
    ev = pick(params.eval, EvalConfig, ("mmlu_questions", "mmlu_shots", "rouge_examples", "max_new_tokens", "heldout_examples",
                                        "batch_size", "seed"))  # fmt: skip
    return CausalEvalJob(run, model.name, method, quant, ev, paths.quantized_dir(CAUSAL, quant_name), adapters,
                         paths.eval_metrics(CAUSAL, run), paths.eval_items(CAUSAL, run), variant, mmlu)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EncoderEvalJob:
    """An encoder row: classification accuracy on the held-out test split, once per trained seed."""

    row: str
    model_name: str
    method: Method
    quant: QuantConfig
    seeds: tuple[int, ...]
    eval: EvalConfig  # batch_size

    def run(self, tracking: Tracking, *, progress: bool = True) -> list:
        started = time.time()  # the MLflow run's start
        from transformers import AutoTokenizer

        from qlora.data.prepared import CLS_LABELS, CLS_TEST
        from qlora.data.tokenization import TokenizedDataset
        from qlora.eval.batches import pad_id
        from qlora.eval.classification import evaluate_classification
        from qlora.models.loading import load_base, load_for_inference

        labels = json.loads((paths.data_dir() / CLS_LABELS).read_text())
        tokenizer = AutoTokenizer.from_pretrained(paths.model_dir(ENCODER))
        test = TokenizedDataset.load(paths.data_dir() / CLS_TEST)
        scored = []
        for seed in self.seeds:
            adapter = paths.seed_dir(paths.adapter_dir(ENCODER, self.row), seed)
            if self.method is Method.FULL:
                model = load_base(adapter, ModelKind.SEQ_CLS, num_labels=len(labels["labels"])).eval()
            else:
                model = load_for_inference(paths.model_dir(ENCODER), ModelKind.SEQ_CLS, adapter, quant=self.quant)
            with compute_context(self.quant, model):
                result = evaluate_classification(model, test, pad_token_id=pad_id(tokenizer), batch_size=self.eval.batch_size * 4,
                                                 progress=progress)  # fmt: skip
            scored.append(_record(result, self.model_name, self.quant, self.method, labels["task"], seed=seed))
        records = _write(scored, paths.eval_metrics(ENCODER, self.row), paths.eval_items(ENCODER, self.row))
        tracking.log(f"evaluate encoder {self.row}", params={"model": self.model_name, "method": self.method.value, **quant_params(self.quant)},
                     metrics={"classification": sum(r.value for r in records) / len(records), "classification_n": records[0].n,
                              "seeds": len(records)},
                     tags={"stage": "evaluate", "role": ENCODER, "run": self.row},
                     row=stage_row(ENCODER, self.row, self.method, self.quant, self.model_name),
                     row_metrics={"classification": sum(r.value for r in records) / len(records)}, config=self, started=started)  # fmt: skip
        return records


def plan_encoder_eval(params: PipelineConfig, run: str) -> EncoderEvalJob:
    model = lookup(params.models, ENCODER, "models")
    spec = lookup(params.ablation.encoder, run, "ablation.encoder")
    return EncoderEvalJob(run, model.name, spec.method, lookup(params.quants, spec.quant, f"ablation.encoder.{run}.quant"),
                          params.ablation.encoder_seeds, pick(params.eval, EvalConfig, ("batch_size",)))  # fmt: skip
