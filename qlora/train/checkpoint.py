"""Resumable training checkpoints, written atomically, without pickle, checked when read.

A checkpoint is a folder `step-<N>/` holding `tensors.safetensors` (every tensor of the state) and
`state.json` (the rest, with tensors replaced by references). The folder is written with
`qlora.atomic.atomic_dir` (a temporary sibling renamed into place once complete), then the `latest`
file (replaced atomically) is pointed at it and older checkpoints are pruned. A process killed at any
moment leaves `latest` naming a complete checkpoint (or no `latest` at all), plus perhaps temporary
folders named with its pid; the next `save_checkpoint` or `latest_checkpoint` on the folder removes
those of writers that no longer run.

Reading checks what it reads: invalid JSON, a truncated tensor file, a reference to a tensor that is not
there (or a tensor nothing refers to), NaN/Inf values, and, for the trainer's own state
(`check_training_state`), missing keys and tensors whose shapes disagree with the model, each give one
error naming the file and the key.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from qlora.atomic import atomic_dir, remove_stale, write_text
from qlora.readers import BadFileError, check_finite, read_json, read_safetensors, require_file

LATEST = "latest"
STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"
_STEP = re.compile(r"step-(\d{8,})")
_ATOMIC_MARKERS = (".tmp-", ".old-")  # qlora.atomic's temporary names: .<name>.tmp-<pid>-<hex>
_LEGACY = re.compile(r"\.step-\d{8,}\.[A-Za-z0-9_]{8}|\.latest\.tmp")  # tempfile.mkdtemp names of earlier versions


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}: {obj!r}")


class _Reader:
    """Rebuilds the state from state.json's skeleton, naming the file and the state path on any mismatch."""

    def __init__(self, folder: Path, tensors: dict[str, torch.Tensor], allow_nonfinite: bool) -> None:
        self.state_path, self.tensors_path = folder / STATE_FILE, folder / TENSORS_FILE
        self.tensors, self.allow_nonfinite, self.used = tensors, allow_nonfinite, set()

    def read(self, obj: Any, where: str) -> Any:
        if isinstance(obj, list):
            raise BadFileError(self.state_path, where or "(top level)", "a bare JSON list; expected a tagged value")
        if not isinstance(obj, dict):
            return obj
        if len(obj) != 1 or next(iter(obj)) not in ("__tensor__", "__dict__", "__tuple__", "__list__"):
            raise BadFileError(self.state_path, where or "(top level)",
                               f"expected one of __tensor__/__dict__/__tuple__/__list__, got keys {sorted(obj)[:5]}")  # fmt: skip
        tag, value = next(iter(obj.items()))
        if tag == "__tensor__":
            return self._tensor(value, where)
        if not isinstance(value, list):
            raise BadFileError(self.state_path, where or "(top level)", f"{tag} holds {type(value).__name__}; expected a list")
        if tag == "__dict__":
            out = {}
            for item in value:
                if not isinstance(item, list) or len(item) != 2:
                    raise BadFileError(self.state_path, where or "(top level)", f"a dict entry {item!r}; expected a [key, value] pair")
                key = self.read(item[0], where)
                if isinstance(key, (dict, list, torch.Tensor)):
                    raise BadFileError(self.state_path, where or "(top level)", f"a dict key of type {type(key).__name__}")
                out[key] = self.read(item[1], f"{where}.{key}" if where else str(key))
            return out
        items = [self.read(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if tag == "__tuple__" else items

    def _tensor(self, key: Any, where: str) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise BadFileError(self.tensors_path, str(key),
                               f"missing: {STATE_FILE} refers to it for {where or 'the state'}")  # fmt: skip
        if key in self.used:
            raise BadFileError(self.state_path, where, f"tensor {key} is referred to twice")
        self.used.add(key)
        tensor = self.tensors[key]
        if not self.allow_nonfinite:
            check_finite(tensor, self.tensors_path, f"{key} ({where})")
        return tensor


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Removes the temporary folders and files that killed writers left in a checkpoint folder.

    Those of `qlora.atomic` carry the writer's pid and are removed only when it no longer runs; the
    fixed names of earlier versions (`.step-<N>.<random>`, `.latest.tmp`) are removed too.

    Returns:
        The removed paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed, targets = [], set()
    for p in directory.iterdir():
        for marker in _ATOMIC_MARKERS:
            if p.name.startswith(".") and marker in p.name:
                targets.add(p.name[1 : p.name.index(marker)])
        if _LEGACY.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    for target in sorted(targets):
        removed += remove_stale(directory / target)
    return removed


def _step_folders(directory: Path) -> list[Path]:
    folders = [p for p in directory.iterdir() if p.is_dir() and _STEP.fullmatch(p.name)]
    return sorted(folders, key=lambda p: int(_STEP.fullmatch(p.name).group(1)))


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 1) -> Path:
    """Writes `state` (nested dicts/lists of tensors and JSON scalars) as checkpoint `step`.

    Args:
        directory: the run's checkpoint folder (created if needed; leftovers of killed writers removed).
        step: the optimizer steps done, >= 0.
        state: what to save.
        keep: how many checkpoints to keep, >= 1 (the oldest are pruned).

    Returns:
        The folder of the new checkpoint.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    final = directory / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        write_text(tmp / STATE_FILE, json.dumps(skeleton))
    write_text(directory / LATEST, final.name)
    for old in _step_folders(directory)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The folder named by `latest`, or None when there is no checkpoint yet.

    Leftovers of killed writers in `directory` are removed first.

    Raises:
        BadFileError: `latest` does not hold a checkpoint folder name.
        FileNotFoundError: `latest` names a folder that is missing or incomplete.
    """
    directory = Path(directory)
    remove_leftovers(directory)
    pointer = directory / LATEST
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if name is None or not _STEP.fullmatch(name):
        raise BadFileError(pointer, None, f"holds {name!r}; expected the name of a checkpoint folder such as 'step-00000012'")
    path = directory / name
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {name}, which does not exist in {directory}")
    for f in (STATE_FILE, TENSORS_FILE):
        require_file(path / f, f"checkpoint file {f} (named by {pointer})")
    return path


def load_checkpoint(path: str | Path, *, allow_nonfinite: bool = False) -> dict[str, Any]:
    """Reads a checkpoint folder written by `save_checkpoint`.

    Args:
        path: the `step-<N>` folder.
        allow_nonfinite: accept NaN/Inf in floating tensors (refused by default: a model or optimizer
            state holding them cannot be resumed).

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        BadFileError (ValueError): naming the file and the key: invalid JSON, a truncated or corrupt
            tensor file, a reference to a missing tensor, a tensor nothing refers to, NaN/Inf values.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder not found")
    skeleton = read_json(path / STATE_FILE, "training state", allow_nonfinite=True)  # losses may be NaN
    tensors = read_safetensors(path / TENSORS_FILE, "checkpoint tensors")
    reader = _Reader(path, tensors, allow_nonfinite)
    state = reader.read(skeleton, "")
    unused = sorted(set(tensors) - reader.used)
    if unused:
        raise BadFileError(path / TENSORS_FILE, unused[0], f"not referred to by {STATE_FILE} ({len(unused)} such tensors)")
    if not isinstance(state, dict):
        raise BadFileError(path / STATE_FILE, None, f"expected a dict state, got {type(state).__name__}")
    return state


def check_training_state(state: Mapping[str, Any], path: str | Path, params: Mapping[str, torch.Tensor]) -> None:
    """Checks a state loaded by `load_checkpoint` against what `qlora.train.trainer.train` writes and needs.

    Keys: step (int >= 0), config (dict), adapter ({name: tensor} with exactly `params`' names, shapes
    and floating dtypes), optimizer ({"state": dict, "param_groups": list}), schedule (dict), rng_cpu
    (the uint8 CPU generator state), losses (one finite-or-NaN number per step).

    Args:
        state: the loaded state.
        path: the checkpoint folder (for the messages).
        params: the model's trainable parameters by name.

    Raises:
        BadFileError (ValueError): naming the file and the key that is missing or wrong.
    """
    path = Path(path)
    json_file, tensor_file = path / STATE_FILE, path / TENSORS_FILE

    def need(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in state:
            raise BadFileError(json_file, key, f"missing; expected {what}")
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadFileError(json_file, key, f"expected {what}, got {type(value).__name__}")
        return value

    step = need("step", int, "the number of steps done (an integer)")
    if step < 0:
        raise BadFileError(json_file, "step", f"got {step}; expected an integer >= 0")
    need("config", dict, "the run's settings (a dict)")
    need("schedule", dict, "the learning-rate schedule's state (a dict)")
    losses = need("losses", list, "the list of step losses")
    if len(losses) != step or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in losses):
        raise BadFileError(json_file, "losses", f"expected {step} numbers (one per step), got {len(losses)} entries")
    rng = need("rng_cpu", torch.Tensor, "the CPU generator state (a uint8 tensor)")
    expected_rng = torch.get_rng_state()
    if rng.dtype != torch.uint8 or rng.shape != expected_rng.shape:
        raise BadFileError(tensor_file, "rng_cpu", f"{rng.dtype} {tuple(rng.shape)}; expected uint8 {tuple(expected_rng.shape)}")
    optimizer = need("optimizer", dict, "the optimizer's state_dict")
    for key, kind in (("state", dict), ("param_groups", list)):
        if not isinstance(optimizer.get(key), kind):
            raise BadFileError(json_file, f"optimizer.{key}", f"missing or not a {kind.__name__}")
    adapter = need("adapter", dict, "the trained parameters by name")
    missing, unexpected = sorted(set(params) - set(adapter)), sorted(set(adapter) - set(params))
    if missing:
        raise BadFileError(tensor_file, f"adapter.{missing[0]}", f"missing ({len(missing)} trained parameters are)")
    if unexpected:
        raise BadFileError(tensor_file, f"adapter.{unexpected[0]}", "not a trainable parameter of this model (another model or settings?)")
    for name, p in params.items():
        value = adapter[name]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape != p.shape:
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise BadFileError(tensor_file, f"adapter.{name}", f"{got}; expected a floating tensor of shape {tuple(p.shape)}")
