"""Validation while a causal row trains: the held-out validation NLL before training (step 0: the adapters as
initialised, i.e. the untuned model) and every few steps, the adapter of each evaluated step kept, and the
adapter of the best step is the row's output (the stopping step chosen on validation, never on the test items;
step 0 when no training helps).

The validation examples come from whole task families held out apart from the test's
(`qlora.data.prepare`); their NLL leaves out the template's end-of-turn tokens. Evaluating does not
change training: it runs without gradients in eval mode and draws nothing from the RNG (dropout draws
from a generator seeded per step), so a row trains to the same adapters with or without it. A killed
run resumes: each evaluated step's result and adapter are files in the run's resume folder.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

STEP_PREFIX = "step"


@dataclasses.dataclass(frozen=True)
class Validation:
    """What to validate on and how often.

    Attributes:
        data / tasks: the validation token file and its sidecar (each example's task, template tail).
        every: evaluate after every this many optimizer steps (and after the last).
        examples: how many validation examples (the first ones: round-robin over their tasks).
        batch_size: examples per forward pass.
    """

    data: Path
    tasks: Path
    every: int
    examples: int
    batch_size: int

    def due(self, step: int, max_steps: int) -> bool:
        return step % self.every == 0 or step == max_steps


@dataclasses.dataclass(frozen=True)
class ValidationCurve:
    steps: tuple[int, ...]
    nll: tuple[float, ...]  # content NLL per token (without the template's tokens)

    @property
    def best_step(self) -> int:
        """The evaluated step with the lowest validation NLL (the earliest on a tie)."""
        return min(zip(self.nll, self.steps))[1]


class Validator:
    """The `on_step` hook of a training run that validates when due (see the module doc)."""

    def __init__(self, validation: Validation, model, tokenizer_pad: int, max_steps: int, folder: Path, save_adapter,
                 compute_dtype) -> None:  # fmt: skip
        from qlora.data.prepared import read_example_tasks
        from qlora.data.tokenization import TokenizedDataset

        self.validation, self.model, self.pad, self.max_steps = validation, model, tokenizer_pad, max_steps
        self.folder, self.save_adapter, self.compute_dtype = Path(folder), save_adapter, compute_dtype
        data = TokenizedDataset.load(validation.data)
        tasks, tail = read_example_tasks(validation.tasks)
        n = min(validation.examples, len(data))
        self.examples, self.groups, self.tail = [data[i] for i in range(n)], tasks[:n], tail[:n]
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics) -> None:
        if self.validation.due(metrics.step, self.max_steps):
            self.evaluate(metrics.step)

    def evaluate(self, step: int) -> float:
        import contextlib

        import torch

        from qlora.atomic import write_json
        from qlora.eval.heldout import evaluate_heldout_nll

        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        autocast = (torch.autocast(device.type, dtype=self.compute_dtype) if self.compute_dtype not in (None, torch.float32)
                    else contextlib.nullcontext())  # fmt: skip
        try:
            with autocast:
                result = evaluate_heldout_nll(self.model, self.examples, pad_token_id=self.pad, batch_size=self.validation.batch_size,
                                              groups=self.groups, template_tail=self.tail, progress=False)  # fmt: skip
        finally:
            self.model.train(was_training)
        self.save_adapter(self.folder / f"{STEP_PREFIX}{step:05d}")
        write_json(self.folder / f"{STEP_PREFIX}{step:05d}.json", {"step": step, "nll": result.value, **result.extra})
        return result.value


def read_curve(folder: Path, max_steps: int) -> ValidationCurve:
    """The evaluated steps (up to `max_steps`) of a validation folder, in step order.

    Raises:
        ValueError: no step was evaluated.
    """
    rows = []
    for f in sorted(Path(folder).glob(f"{STEP_PREFIX}*.json")):
        data = json.loads(f.read_text())
        if data["step"] <= max_steps:
            rows.append((int(data["step"]), float(data["nll"])))
    if not rows:
        raise ValueError(f"no validation result in {folder}")
    steps, nll = zip(*rows)
    return ValidationCurve(tuple(steps), tuple(nll))


def install_best(folder: Path, curve: ValidationCurve, out_dir: Path, keep: tuple[str, ...]) -> None:
    """Replaces `out_dir` (atomically) by the adapter of the best validated step, keeping the files named in
    `keep` from the current `out_dir` (e.g. the quantization record)."""
    from qlora.atomic import atomic_dir

    best = Path(folder) / f"{STEP_PREFIX}{curve.best_step:05d}"
    with atomic_dir(out_dir) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(best, tmp)
        for name in keep:
            if (Path(out_dir) / name).exists():
                shutil.copy2(Path(out_dir) / name, tmp / name)
