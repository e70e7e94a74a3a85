"""`qlora finetune`: a model + the user's own data -> a PEFT adapter, resumable when re-run.

The same training run as the pipeline's (`qlora.pipeline.finetune.TrainJob`: the trainer, resumable
checkpoints keyed to the settings and the bytes of the model and the data, the adapter written
atomically in PEFT's format with the quantization it was trained on), on the user's records tokenized
with the model's tokenizer (`qlora.data.user`). A killed run leaves `<out>.work/` behind; running the
same command again resumes from its last checkpoint; a finished run removes it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from qlora.config import DataConfig, LoRAConfig, ModelConfig, ModelKind, QuantConfig
from qlora.pipeline.config import CAUSAL, main_method
from qlora.pipeline.outputs import OutputKind, mark_output
from qlora.pipeline.tracking import Tracking
from qlora.train.config import TrainConfig

RECORD_FILE = "train_record.json"  # beside the adapter: memory, speed, the loss curve
LOSS_FILE = "loss.csv"


@dataclasses.dataclass(frozen=True)
class UserFinetuneResult:
    adapter: Path
    base: str  # the base as recorded in adapter_config.json
    records: int  # records read from the user's data
    examples: int  # sequences trained on (records longer than data.max_length are skipped)
    too_long: int
    steps: int
    resumed_from: int | None
    final_loss: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class UserFinetuneJob:
    """Fine-tune `model` on the user's data (`data.source` JSONL or HF_DATASET) into `out_dir`."""

    model: ModelConfig
    quant: QuantConfig
    lora: LoRAConfig
    train: TrainConfig
    data: DataConfig
    out_dir: Path

    @property
    def work_dir(self) -> Path:
        """Tokens and resumable checkpoints while the run is unfinished."""
        return self.out_dir.parent / f"{self.out_dir.name}.work"

    def run(self, tracking: Tracking, cache_dir: str | Path, *, progress: bool = True) -> UserFinetuneResult:
        """Trains and writes the adapter (+ train_record.json, loss.csv) to `out_dir`.

        Raises:
            ValueError: the model is not a causal LM, or has no tokenizer; bad records (naming the file,
                the line and the field).
            FileNotFoundError: the model or the data is not available.
        """
        from transformers import AutoTokenizer

        from qlora.data.user import load_user_data, tokenize_user_data
        from qlora.pipeline.finetune import TrainJob
        from qlora.pipeline.user_model import model_folder, model_params

        if self.model.kind is not ModelKind.CAUSAL_LM:
            from qlora.checks import ConfigError

            raise ConfigError("model.kind", self.model.kind.name, "CAUSAL_LM: `qlora finetune` instruction-tunes causal LMs")
        user = load_user_data(self.data)  # a bad record fails before the model loads
        folder = model_folder(self.model, cache_dir)
        _check_targets(folder, self.lora)  # lora targets that match no layer fail before anything is written
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: no tokenizer to encode the data with ({' '.join(str(e).split())[:200]})") from None
        tokens = tokenize_user_data(tokenizer, user, max_length=self.data.max_length, limit=self.data.instruction_train, seed=self.data.seed)
        created = not self.work_dir.exists()
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            mark_output(self.work_dir, OutputKind.FINETUNE_WORK)
            token_file = self.work_dir / "train.safetensors"
            if not _same_tokens(token_file, tokens.dataset):  # kept on a re-run: its bytes key the resumable state
                tokens.dataset.save(token_file)  # (safetensors' header order varies between processes)
            base = self.model.reference  # what the adapter names as its base (PEFT's base_model_name_or_path)
            run_params = {**model_params(self.model), "data.source": self.data.source.name, "data.path": user.origin,
                          "data.format": user.format.name, "data.records": str(tokens.records), "data.examples": str(tokens.used),
                          "data.max_length": str(self.data.max_length), "out": str(self.out_dir)}  # fmt: skip
            job = TrainJob(CAUSAL, "cli", self.model.name, ModelKind.CAUSAL_LM, main_method(self.quant), self.quant, self.lora,
                           self.train, checkpoint=folder, data=token_file, out_dir=self.out_dir, resume_root=self.work_dir / "resume",
                           metrics_path=self.out_dir / RECORD_FILE, loss_path=self.out_dir / LOSS_FILE, log_row=False,
                           seed=self.train.seed, base_reference=base, run_name=f"finetune {self.out_dir}",
                           run_params=run_params)  # fmt: skip
            out = job.run(tracking, progress=progress)
        except BaseException:
            # a run refused or failed before its first checkpoint leaves nothing to resume: no `.work/` behind
            if created and not any(p.is_file() for p in (self.work_dir / "resume").rglob("*")):
                shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        mark_output(self.out_dir, OutputKind.ADAPTER)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        result = out.result
        return UserFinetuneResult(self.out_dir, base, tokens.records, tokens.used, tokens.too_long, result.steps, result.resumed_from,
                                  result.losses[-1] if result.losses else float("nan"), result.seconds)  # fmt: skip


def _check_targets(folder: Path, lora: LoRAConfig) -> None:
    """Refuses `lora.targets` that select no linear layer of the model in `folder`, from its config.json
    alone (the rule `load_for_training` applies once the model is loaded).

    Raises:
        ValueError: naming the targets and the layer names the model has.
    """
    if not lora.rank:
        return
    from qlora.models.pretrained import meta_skeleton
    from qlora.models.surgery import linear_modules, select_targets
    from qlora.readers import read_json

    select_targets(linear_modules(meta_skeleton(read_json(folder / "config.json", "model config"), ModelKind.CAUSAL_LM)), lora)


def _same_tokens(path: Path, dataset) -> bool:
    """Whether `path` already holds exactly `dataset`'s tokens."""
    import torch

    from qlora.data.tokenization import TokenizedDataset

    if not path.is_file():
        return False
    try:
        old = TokenizedDataset.load(path)
    except ValueError:
        return False
    return old.kind == dataset.kind and all(torch.equal(getattr(old, k), getattr(dataset, k)) for k in ("input_ids", "offsets", "labels"))
