"""One fine-tuning run of the pipeline: base checkpoint -> trained adapter (or full model) + its record."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from qlora.config import LoRAConfig, Method, ModelKind, QuantConfig
from qlora.data.tokenization import TokenizedDataset
from qlora.models.loading import adapter_weights, load_base, load_for_training
from qlora.models.peft_format import TaskType, save_peft_adapter
from qlora.models.surgery import model_report
from qlora.quant.dtypes import bits_per_param
from qlora.report.records import TrainRecord
from qlora.train.config import TrainConfig
from qlora.train.trainer import TrainResult, train


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    record: TrainRecord
    result: TrainResult


def finetune(
    *,
    model_name: str,
    checkpoint: str | Path,
    kind: ModelKind,
    method: Method,
    quant: QuantConfig,
    lora: LoRAConfig,
    train_config: TrainConfig,
    data: str | Path,
    out_dir: str | Path,
    resume_dir: str | Path,
    num_labels: int | None = None,
    pad_token_id: int = 0,
    progress: bool = True,
) -> FinetuneResult:
    """Trains and writes `out_dir` (a PEFT adapter folder, or for FULL a transformers folder).

    Args:
        checkpoint: a `quantize_checkpoint` folder (FULL: a plain base folder).
        method: FULL trains every weight of a BF16 base; LORA/QLORA train adapters (+ a classifier head).
        resume_dir: where resumable training checkpoints live (a killed run resumes from here).
    """
    if method is Method.NONE:
        raise ValueError("method NONE trains nothing; evaluate the base instead")
    if method is Method.FULL:
        model = load_base(checkpoint, kind, num_labels=num_labels)
        for p in model.parameters():
            p.requires_grad = True
        stored_bits = 16.0
    else:
        model = load_for_training(checkpoint, kind, quant, lora, num_labels=num_labels)
        stored_bits = bits_per_param(quant.dtype, quant.block_size, quant.double_quant)
    report = model_report(model)
    dataset = TokenizedDataset.load(data)
    result = train(model, dataset, train_config, pad_token_id=pad_token_id, checkpoint_dir=resume_dir, progress=progress)

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if method is Method.FULL:
        model.save_pretrained(tmp)
    else:
        task = TaskType.SEQ_CLS if kind is ModelKind.SEQ_CLS else TaskType.CAUSAL_LM
        save_peft_adapter(tmp, adapter_weights(model, lora, task, base_model=model_name))
        (tmp / "qlora_quant.json").write_text(json.dumps({"dtype": quant.dtype.value, "double_quant": quant.double_quant,
                                                          "block_size": quant.block_size}) + "\n")  # fmt: skip
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)

    trainable = [p for p in model.parameters() if p.requires_grad]
    last = result.history[-1].memory if result.history else None
    tokens_per_s = sum(m.tokens for m in result.history) / max(1e-9, sum(m.tokens / m.tokens_per_s for m in result.history)) if result.history else 0.0
    record = TrainRecord(
        model=model_name,
        quant="bf16" if method is Method.FULL else quant.label,
        method=method,
        bits_per_param=stored_bits,
        weight_mb=report.weight_bytes_after / 2**20,  # stored weights without the adapters (FULL: the whole model)
        adapter_mb=sum(p.numel() * p.element_size() for p in trainable) / 2**20,
        peak_mb=(last.peak / 2**20) if last else 0.0,
        peak_kind="cuda_max_allocated" if last and last.device == "cuda" else "cpu_peak_rss",
        steps=result.steps,
        tokens_per_s=tokens_per_s,
        losses=tuple(result.losses),
    )
    return FinetuneResult(record, result)
