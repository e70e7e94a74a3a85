"""`qlora eval`: MMLU, perplexity and RougeL of a model (quantized as it loads) with an optional adapter.

The same evaluators as the pipeline's `evaluate` stages (`qlora.eval`): k-shot MMLU on the embedded
test split with the embedded dev exemplars, perplexity on windows of a seeded sample of MMLU question
stems, RougeL of greedy generations against the user's own records (`data.path`: pass a held-out file).
"""

from __future__ import annotations

import dataclasses
import enum
import random
import time
from pathlib import Path

from qlora.config import DataConfig, DataSource, EvalConfig, ModelConfig, ModelKind, QuantConfig
from qlora.pipeline.tracking import Tracking, quant_params


class EvalTask(enum.Enum):
    MMLU = "mmlu"
    PERPLEXITY = "perplexity"
    ROUGE = "rouge"


@dataclasses.dataclass(frozen=True)
class UserEvalJob:
    """Evaluate `model` (+ `adapter`) on `tasks`.

    Attributes:
        quant: how to store the base while evaluating; None: as recorded with the adapter or the folder
            (a quantized folder as it is), else NF4+DQ (`qlora.from_pretrained`'s rule).
    """

    model: ModelConfig
    adapter: Path | None
    quant: QuantConfig | None
    tasks: tuple[EvalTask, ...]
    eval: EvalConfig
    data: DataConfig

    def __post_init__(self) -> None:
        from qlora.checks import ConfigError

        if not self.tasks:
            raise ConfigError("tasks", "", f"one or more of {', '.join(t.value for t in EvalTask)}")
        if EvalTask.ROUGE in self.tasks and self.data.source is DataSource.EMBEDDED:
            raise ConfigError("data.path", "", "the user's records to score RougeL on (a JSONL file or dataset of held-out examples)")
        if self.model.kind is not ModelKind.CAUSAL_LM:
            raise ConfigError("model.kind", self.model.kind.name, "CAUSAL_LM: `qlora eval` scores causal LMs")

    def run(self, tracking: Tracking, cache_dir: str | Path, *, progress: bool = True) -> dict:
        """{task: EvalResult}; logged as one MLflow run."""
        from transformers import AutoTokenizer

        from qlora.models.pretrained import from_pretrained
        from qlora.models.saving import model_quant_config
        from qlora.pipeline.user_model import model_folder, model_params

        started = time.time()
        folder = model_folder(self.model, cache_dir)
        model = from_pretrained(folder, quant=self.quant, adapter=self.adapter)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        ev, results = self.eval, {}
        for task in self.tasks:
            if task is EvalTask.MMLU:
                from qlora.data.mmlu import load_fewshot_pool, load_mmlu
                from qlora.eval.mmlu import evaluate_mmlu

                results["mmlu"] = evaluate_mmlu(model, tokenizer, load_mmlu(), load_fewshot_pool() if ev.mmlu_shots else None,
                                                k=ev.mmlu_shots, limit=ev.mmlu_questions or None, seed=ev.seed,
                                                batch_size=ev.batch_size, progress=progress)  # fmt: skip
            elif task is EvalTask.PERPLEXITY:
                from qlora.data.mmlu import load_mmlu
                from qlora.data.prepared import perplexity_windows
                from qlora.eval.perplexity import evaluate_perplexity

                questions = load_mmlu()
                stems = [q.question for q in random.Random(self.data.seed).sample(questions, min(len(questions), 4000))]
                windows = perplexity_windows(tokenizer, stems, self.data.perplexity_window_tokens, self.data.perplexity_windows)
                results["perplexity"] = evaluate_perplexity(model, windows, batch_size=ev.batch_size, progress=progress)
            else:
                from qlora.data.user import load_user_data
                from qlora.eval.rouge import evaluate_rouge

                records = load_user_data(self.data).conversations[: ev.rouge_examples]
                results["rougeL"] = evaluate_rouge(model, tokenizer, [c.prompt for c in records], [[c.reference] for c in records],
                                                   max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, progress=progress)  # fmt: skip
        quant = model_quant_config(model)
        data = {"data.source": self.data.source.name, "data.path": self.data.path} if self.data.source is not DataSource.EMBEDDED else {}
        name = f"eval {self.model.name}" + (f" + {self.adapter}" if self.adapter else "")
        tracking.log(name, params={**model_params(self.model), **quant_params(quant), "adapter": str(self.adapter or ""), "eval": self.eval,
                                   "tasks": ",".join(t.value for t in self.tasks), **data},
                     metrics={k: r.value for k, r in results.items()} | {f"{k}_n": r.n for k, r in results.items()},
                     tags={"stage": "cli_eval"}, config=self, started=started)  # fmt: skip
        return results


_RESULT_FIELDS = {"value", "n", "ci_low", "ci_high"}
_RESULT_NAMES = {"mmlu", "perplexity", "rougeL"}


def results_json(results: dict) -> dict:
    """`qlora eval --json`'s content: {task: {value, n, ci_low, ci_high}}."""
    return {t: {"value": r.value, "n": r.n, "ci_low": r.ci_low, "ci_high": r.ci_high} for t, r in results.items()}


def is_results_file(path: str | Path) -> bool:
    """Whether `path` holds a previous `results_json` (so `--json` may replace it): by its whole shape."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(data, dict) and bool(data) and set(data) <= _RESULT_NAMES
            and all(isinstance(v, dict) and set(v) == _RESULT_FIELDS for v in data.values()))  # fmt: skip
