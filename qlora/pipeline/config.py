"""The pipeline's configs: the whole of params.yaml (composed by Hydra from conf/), runs and the ablation.

The library's configs (quant, LoRA, train, model, data, eval) are the section types; this module adds
what only the pipeline knows: which base models take part, which data types, which rows of the
paper's tables, per-row learning rates and seeds. Everything is validated when composed
(`qlora.pipeline.params.pipeline_config`), before any stage does any work.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

from qlora.checks import ConfigError, check_bool, check_float, check_int, check_str, parse_enum
from qlora.config import Checkpointing, DataConfig, EvalConfig, LoRAConfig, Method, ModelConfig, ModelKind, ModelSource, QuantConfig, Targets
from qlora.train.config import TrainConfig

CAUSAL, ENCODER = "causal", "encoder"  # the two roles every pipeline has (keys of PipelineConfig.models)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class RunSpec:
    """One row of an ablation: a training method on a base stored as `quant` (a key of `quants`).

    Attributes:
        lr: this row's learning rate; None takes the train section's (full fine-tuning of a BERT-class
            model needs ~2e-5..5e-5, adapters ~1e-4..1e-3).
        targets / rank: this row's adapters where they differ from the lora section's (findings f: attention
            only; g: other ranks); such a row needs a `variant` name (the tables show the lora section's rows).
        variant: the row's name in the records ("" for the table's rows).
        mmlu: evaluate k-shot MMLU after training (Table 4). False for rows whose claims are decided on
            held-out NLL alone (findings f, g: the paper's Figures 2 and 3 are not MMLU), saving its cost.
    """

    method: Method = Method.QLORA
    quant: str = "nf4_dq"
    lr: Optional[float] = None
    targets: Optional[Targets] = None
    rank: Optional[int] = None
    variant: Optional[str] = None  # None: "" (the key may be left out)
    mmlu: Optional[bool] = None  # None: True (the key may be left out)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_enum("method", self.method, Method))
        check_str("quant", self.quant)
        if self.lr is not None:
            object.__setattr__(self, "lr", check_float("lr", self.lr, minimum=0, exclusive_minimum=True))
        if self.method is Method.NONE:
            raise ConfigError("method", self.method.name, "FULL, LORA or QLORA for a training row (NONE trains nothing)")
        if self.targets is not None:
            object.__setattr__(self, "targets", parse_enum("targets", self.targets, Targets))
            if self.targets is Targets.NAMES:
                raise ConfigError("targets", "NAMES", "ALL_LINEAR, ATTENTION or MLP for a row (names belong in the lora section)")
        if self.rank is not None:
            check_int("rank", self.rank, minimum=1)
        object.__setattr__(self, "variant", check_str("variant", self.variant or "", nonempty=False))
        object.__setattr__(self, "mmlu", True if self.mmlu is None else check_bool("mmlu", self.mmlu))
        if (self.targets is not None or self.rank is not None) != bool(self.variant):
            raise ConfigError("variant", self.variant, "a name (e.g. attention, r8) exactly when the row sets targets or rank")

    def lora_for(self, lora: LoRAConfig) -> LoRAConfig:
        """The lora section with this row's targets and rank."""
        if self.targets is None and self.rank is None:
            return lora
        targets = self.targets if self.targets is not None else lora.targets
        return dataclasses.replace(lora, rank=self.rank or lora.rank, targets=targets,
                                   target_names=lora.target_names if targets is Targets.NAMES else ())  # fmt: skip


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class AblationConfig:
    """Which models, data types and training rows `dvc repro` runs.

    Attributes:
        base_models: keys of `models` whose quantized bases are evaluated without training (Table 2:
            perplexity; zero-shot MMLU) for every data type in `base_quants`.
        base_quants: keys of `quants` for those evaluations.
        causal / encoder: the training rows (Tables 3 and 4) of `models.causal` and `models.encoder`; every
            causal row's data type must be one of `base_quants` (its quantized base is shared).
        encoder_seeds / causal_seeds: every encoder / causal row is trained once per seed (run-to-run noise).
        base_mmlu_quants: the data types of `base_quants` whose bases also get zero-shot MMLU (empty: all); the
            others get perplexity only (claims k and l rest on perplexity; zero-shot MMLU costs ~1 s a question).
        untuned_quants: the causal base is also evaluated untuned (Tables 3 and 4's reference) stored as each
            of these data types, so that every fine-tuning effect is a difference in differences (each row's
            gain over its own untuned base); each must be one of `base_quants`.
        analyses: the measurements of stage `analysis` (values of `Analysis`; none by default, the findings
            profile runs them all), set up by the `analysis` section.
    """

    base_models: tuple[str, ...] = ("causal",)
    base_quants: tuple[str, ...] = ("bf16", "int8", "int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq")
    causal: dict[str, RunSpec] = dataclasses.field(default_factory=dict)
    encoder: dict[str, RunSpec] = dataclasses.field(default_factory=dict)
    encoder_seeds: tuple[int, ...] = (0,)
    causal_seeds: tuple[int, ...] = (0,)
    untuned_quants: tuple[str, ...] = ("bf16",)
    base_mmlu_quants: tuple[str, ...] = ()
    analyses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.analyses, str) or len(set(self.analyses)) != len(self.analyses):
            raise ConfigError("analyses", self.analyses, "a list without repeats (possibly empty)")
        allowed = [a.value for a in Analysis]
        for i, name in enumerate(self.analyses):
            if name not in allowed:  # exact: the value names the stage's output files
                raise ConfigError(f"analyses[{i}]", name, f"one of {', '.join(allowed)}")
        object.__setattr__(self, "analyses", tuple(self.analyses))
        object.__setattr__(self, "base_mmlu_quants", tuple(self.base_mmlu_quants))
        for key in ("base_models", "base_quants", "encoder_seeds", "causal_seeds", "untuned_quants"):
            values = getattr(self, key)
            if isinstance(values, (str, int)) or not values:
                raise ConfigError(key, values, "a non-empty list")
            if len(set(values)) != len(values):
                raise ConfigError(key, list(values), "a list without repeats")
            object.__setattr__(self, key, tuple(values))
        for key in ("encoder_seeds", "causal_seeds"):
            for seed in getattr(self, key):
                check_int(key, seed, minimum=0)


class Analysis(enum.Enum):
    """The measurements of stage `analysis` (`ablation.analyses`), each behind one claim of the findings."""

    MEMORY = "memory"  # claim (h): where a QLoRA training step's memory goes
    OUTLIERS = "outliers"  # claim (i): weight outliers against model size


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class MemoryAnalysisConfig:
    """Claim (h): the memory of a QLoRA training step of `models.causal`, by part, per configuration.

    Attributes:
        quant: the base's data type (a key of `quants`; the paper's NF4 + DQ).
        ranks / seq_lens: the grid (LoRA rank x tokens per sequence); every point with gradient
            checkpointing off and `checkpointing`.
        micro_batch_size: sequences per micro-batch (activations grow with it).
        micro_batches: measured micro-batches per configuration, after one warm-up step.
        checkpointing: the gradient checkpointing compared with none.
        seed: adapter init and the token ids (random: memory depends on shapes only).
    """

    quant: str = "nf4_dq"
    ranks: tuple[int, ...] = (8, 16, 64)
    seq_lens: tuple[int, ...] = (128, 256, 512)
    micro_batch_size: int = 1
    micro_batches: int = 2
    checkpointing: Checkpointing = Checkpointing.NON_REENTRANT
    seed: int = 0

    def __post_init__(self) -> None:
        check_str("quant", self.quant)
        for key in ("ranks", "seq_lens"):
            values = getattr(self, key)
            if isinstance(values, (str, int)) or not values or len(set(values)) != len(values):
                raise ConfigError(key, values, "a non-empty list without repeats")
            object.__setattr__(self, key, tuple(check_int(f"{key}[{i}]", v, minimum=1) for i, v in enumerate(values)))
        check_int("micro_batch_size", self.micro_batch_size, minimum=1)
        check_int("micro_batches", self.micro_batches, minimum=1)
        check_int("seed", self.seed, minimum=0)
        object.__setattr__(self, "checkpointing", parse_enum("checkpointing", self.checkpointing, Checkpointing))
        if self.checkpointing is Checkpointing.OFF:
            raise ConfigError("checkpointing", self.checkpointing.name, "REENTRANT or NON_REENTRANT (compared with OFF)")


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class OutlierAnalysisConfig:
    """Claim (i): per-layer weight statistics of the embedded causal LMs, read from their GGUF files.

    Attributes:
        models: embedded GGUF models (SMOLLM2, GEMMA3_270M, QWEN25_CODER_05B, QWEN25_CODER_15B); one whose
            package is not installed is reported as not measured.
        block_size / sigmas: an outlier lies beyond `sigmas` standard deviations of its block of `block_size`.
        n_resamples / seed: the bootstrap over layers of the trend's interval.
    """

    models: tuple[ModelSource, ...] = (ModelSource.SMOLLM2, ModelSource.GEMMA3_270M, ModelSource.QWEN25_CODER_05B,
                                       ModelSource.QWEN25_CODER_15B)  # fmt: skip
    block_size: int = 64
    sigmas: float = 6.0
    n_resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        gguf = (ModelSource.SMOLLM2, ModelSource.GEMMA3_270M, ModelSource.QWEN25_CODER_05B, ModelSource.QWEN25_CODER_15B)
        if isinstance(self.models, str) or not self.models:
            raise ConfigError("models", self.models, "a non-empty list of embedded GGUF models")
        models = tuple(parse_enum(f"models[{i}]", m, ModelSource) for i, m in enumerate(self.models))
        for i, m in enumerate(models):
            if m not in gguf:
                raise ConfigError(f"models[{i}]", m.name, f"an embedded GGUF model: {', '.join(g.name for g in gguf)}")
        if len(set(models)) != len(models):
            raise ConfigError("models", [m.name for m in models], "a list without repeats")
        object.__setattr__(self, "models", models)
        check_int("block_size", self.block_size, minimum=2)
        check_float("sigmas", self.sigmas, minimum=0, exclusive_minimum=True)
        check_int("n_resamples", self.n_resamples, minimum=100)
        check_int("seed", self.seed, minimum=0)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class AnalysisConfig:
    """The settings of stage `analysis`, one section per `Analysis` (run those in `ablation.analyses`)."""

    memory: MemoryAnalysisConfig = dataclasses.field(default_factory=MemoryAnalysisConfig)
    outliers: OutlierAnalysisConfig = dataclasses.field(default_factory=OutlierAnalysisConfig)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class DemoConfig:
    """The quantization demo (stage quantize_demo): every data type on the embedded encoder's weights."""

    model: str = "encoder"  # a key of `models`
    block_size: int = 64
    dtypes: tuple[str, ...] = ("bf16", "int8", "int4", "fp4", "fp4_e3m0", "nf4")
    double_quant_for: tuple[str, ...] = ("fp4", "nf4")

    def __post_init__(self) -> None:
        from qlora.quant.dtypes import VALID_BLOCK_SIZES, DataType

        check_str("model", self.model)
        if isinstance(self.block_size, bool) or self.block_size not in VALID_BLOCK_SIZES:
            raise ConfigError("block_size", self.block_size, f"one of {', '.join(map(str, VALID_BLOCK_SIZES))}")
        if not self.dtypes:
            raise ConfigError("dtypes", list(self.dtypes), "a non-empty list of data types")
        for i, d in enumerate(self.dtypes):
            parse_enum(f"dtypes[{i}]", d, DataType)
        for i, d in enumerate(self.double_quant_for):
            if not parse_enum(f"double_quant_for[{i}]", d, DataType).is_quantized:
                raise ConfigError(f"double_quant_for[{i}]", d, "a quantized data type")


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class PipelineConfig:
    """The whole of params.yaml (composed by Hydra from conf/).

    Attributes:
        models: every base model the pipeline uses, by key (conf/model options): `causal` (fine-tuned, and
            evaluated per data type), `encoder` (classification rows), and any further causal LMs that
            `ablation.base_models` evaluates per data type.
        quant: the main QLoRA run's data type (what `dvc exp run -S quant=fp4` changes).
        quants: the data types of the ablation, by key.
        train / train_encoder: training of the causal rows and of the encoder rows.
        profile: the name of the experiment profile that produced these params (reports say it).
        findings_path: the report stage's verdicts (the findings profile writes the repository's
            reports/findings.md from its own folder).
        robustness_path: the committed results of benchmarks/source_noise_robustness.py, which the findings
            show beside claims (a) and (b) (re-quantization of GGUF-sourced models).
        shipping_path: the committed results of benchmarks/shipping_costs.py, which the findings show as
            claim (m) (what merging and GGUF export cost against the adapter).
    """

    models: dict[str, ModelConfig] = dataclasses.field(
        default_factory=lambda: {CAUSAL: ModelConfig(), ENCODER: ModelConfig("all-MiniLM-L6-v2", ModelSource.MINILM, ModelKind.SEQ_CLS)})
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    quants: dict[str, QuantConfig] = dataclasses.field(default_factory=dict)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    train_encoder: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    ablation: AblationConfig = dataclasses.field(default_factory=AblationConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    analysis: AnalysisConfig = dataclasses.field(default_factory=AnalysisConfig)
    profile: str = "cpu"
    findings_path: str = "reports/findings_default.md"  # where the report stage writes the verdicts
    robustness_path: str = "reports/source_noise_robustness.json"
    shipping_path: str = "reports/shipping_costs.json"

    def __post_init__(self) -> None:
        check_str("profile", self.profile)
        if not check_str("findings_path", self.findings_path).endswith(".md"):
            raise ConfigError("findings_path", self.findings_path, "a markdown file path (*.md)")
        if self.lora.rank == 0:  # every run of the pipeline and the command line trains adapters
            raise ConfigError("lora.rank", 0, "an integer >= 1: the rank r of the LoRA adapters (the paper uses 64; 8-64 is usual)")
        ab = self.ablation
        for role, kind in ((CAUSAL, ModelKind.CAUSAL_LM), (ENCODER, ModelKind.SEQ_CLS)):
            self._model("models", role, kind)
        for key in ab.base_models:
            self._model("ablation.base_models", key, ModelKind.CAUSAL_LM)
        if CAUSAL not in ab.base_models:
            raise ConfigError("ablation.base_models", list(ab.base_models), f"a list that includes {CAUSAL!r} (its bases are fine-tuned)")
        for name in ab.base_quants:
            self._quant("ablation.base_quants", name)
        for key in ("untuned_quants", "base_mmlu_quants"):
            outside = [q for q in getattr(ab, key) if q not in ab.base_quants]
            if outside:
                raise ConfigError(f"ablation.{key}", list(getattr(ab, key)),
                                  f"keys of ablation.base_quants ({', '.join(ab.base_quants)}); {outside} are not")  # fmt: skip
        outside = [q for q in ab.untuned_quants if q not in ab.base_quants]
        if outside:
            raise ConfigError("ablation.untuned_quants", list(ab.untuned_quants),
                              f"keys of ablation.base_quants ({', '.join(ab.base_quants)}); {outside} are not")  # fmt: skip
        for section, runs in (("causal", ab.causal), ("encoder", ab.encoder)):
            seen: dict = {}
            for run, spec in runs.items():
                cell = (spec.method, spec.quant, spec.variant)
                if cell in seen:
                    raise ConfigError(f"ablation.{section}.{run}", f"{spec.method.name} {spec.quant}",
                                      f"a row unlike ablation.{section}.{seen[cell]} (give one a variant name)")  # fmt: skip
                seen[cell] = run
                where = f"ablation.{section}.{run}"
                quant = self._quant(f"{where}.quant", spec.quant)
                if section == "causal" and spec.quant not in ab.base_quants:
                    raise ConfigError(f"{where}.quant", spec.quant, f"one of ablation.base_quants ({', '.join(ab.base_quants)})")
                if spec.method is Method.QLORA and not quant.dtype.is_quantized:
                    raise ConfigError(f"{where}.quant", spec.quant, "a quantized data type for a QLORA row (use method LORA on bf16)")
                if spec.method in (Method.LORA, Method.FULL) and quant.dtype.is_quantized:
                    raise ConfigError(f"{where}.quant", spec.quant, f"a bf16 base for a {spec.method.name} row")
        if self.demo.model not in self.models:
            raise ConfigError("demo.model", self.demo.model, f"one of the models: {', '.join(sorted(self.models))}")
        self._quant("analysis.memory.quant", self.analysis.memory.quant)

    def _model(self, key: str, name: str, kind: ModelKind) -> ModelConfig:
        if name not in self.models:
            if key == "models":
                raise ConfigError(f"models.{name}", None, f"a {kind.name} model (the pipeline needs models.{CAUSAL} and models.{ENCODER})")
            raise ConfigError(key, name, f"one of the models: {', '.join(sorted(self.models))}")
        model = self.models[name]
        if model.kind is not kind:
            if key == "models":
                raise ConfigError(f"models.{name}.kind", model.kind.name, f"{kind.name} (the {name} role)")
            raise ConfigError(key, name, f"a {kind.name} model (models.{name}.kind is {model.kind.name})")
        return model

    def _quant(self, key: str, name: str) -> QuantConfig:
        if name not in self.quants:
            raise ConfigError(key, name, f"one of the data types in quants: {', '.join(sorted(self.quants))}")
        return self.quants[name]


def main_method(quant: QuantConfig) -> Method:
    """The main run's method: QLoRA on a quantized base, LoRA on bf16."""
    return Method.QLORA if quant.dtype.is_quantized else Method.LORA
