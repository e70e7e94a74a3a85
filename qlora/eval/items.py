"""Per-item scores of an evaluation, keyed by stable item ids, so that two runs (data types, methods)
can be compared item by item (paired statistics, `qlora.report.paired`).

Item ids depend only on the evaluated content, never on the model: a perplexity window is its index
and a hash of its token ids, an MMLU question its subject and a hash of its text and choices, a
prompt a hash of its text. An id that occurs twice in one evaluation (MMLU has 27 duplicated
questions) gets "#2", "#3", ... in order of occurrence.

File format (`ItemResults.save`), one item per line so that it diffs and greps well:

    {"format": "qlora-items/1", "task": "<Task value>", "items": [
    {"id": "...", ...},
    ...
    ]}

with, per task, exactly these item keys:
- perplexity, heldout_nll: id, tokens (predicted tokens, int >= 1), nll_sum (summed NLL in nats);
  heldout_nll may add content_tokens, content_nll_sum (the same without the template's trailing tokens)
  and its ids start with the example's task ("<task>/x...")
- mmlu, mmlu_0shot: id, subject, answer ("A".."D"), shots, letter_pred ("A".."D", see `MMLUItem`),
  letter_logprobs (4 log-probabilities of the letter tokens; both null when the letter rule was not
  recorded, e.g. Table 2's choice-only zero-shot scoring), choice_pred, choice_logprob_sums (4 summed
  log-probabilities of " {choice}"), choice_tokens (4 token counts); the three choice_* keys are null
  when choice log-likelihoods were not computed; rotated_letter_logprobs (3 x 4 log-probabilities of the
  letters under the cyclic rotations of the choices; may be absent in files written before it existed)
- classification: id, label, pred (class indices)
- rougeL: id, score (RougeL F in [0, 1])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from qlora.atomic import write_text
from qlora.eval.result import Task

FORMAT = "qlora-items/1"
# defaulted keys that files have always written (choice_* may be null, never absent)
_REQUIRED_DEFAULTED = {"choice_pred", "choice_logprob_sums", "choice_tokens"}
LETTERS = ("A", "B", "C", "D")


# --- stable ids -------------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def text_id(prefix: str, *parts: str) -> str:
    """"<prefix>/<12 hex digits of sha256 over the parts>" (parts joined by a unit separator)."""
    return f"{prefix}/{_digest(chr(31).join(parts).encode('utf-8'))}"


def tokens_id(prefix: str, index: int, ids: torch.Tensor | Sequence[int]) -> str:
    """"<prefix><index, 5 digits>-<12 hex digits of sha256 over the int64 little-endian token ids>"."""
    array = np.asarray(torch.as_tensor(ids).flatten().tolist(), dtype="<i8")
    return f"{prefix}{index:05d}-{_digest(array.tobytes())}"


def unique_ids(ids: Iterable[str]) -> list[str]:
    """The ids with "#k" appended to the k-th occurrence (k >= 2) of a repeated one."""
    seen: Counter = Counter()
    out = []
    for i in ids:
        seen[i] += 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


# --- items ------------------------------------------------------------------------------------------


def _check_str(name: str, v) -> None:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{name} must be a non-empty string, got {v!r}")


def _check_int(name: str, v, low: int = 0) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _check_float(name: str, v, low: float = -math.inf, high: float = math.inf) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        bounds = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}]"
        raise ValueError(f"{name} must be a finite number{bounds}, got {v!r}")


def _check_letter(name: str, v) -> None:
    if v not in LETTERS:
        raise ValueError(f"{name} must be one of {LETTERS}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class TokenNLL:
    """A perplexity window or a held-out example: predicted tokens and their summed NLL (nats); for a
    held-out example also the same without the template's trailing tokens (`content_*`, None if unknown)."""

    id: str
    tokens: int
    nll_sum: float
    content_tokens: int | None = None
    content_nll_sum: float | None = None

    def __post_init__(self) -> None:
        _check_str("id", self.id)
        _check_int("tokens", self.tokens, 1)
        _check_float("nll_sum", self.nll_sum)
        if (self.content_tokens is None) != (self.content_nll_sum is None):
            raise ValueError("content_tokens and content_nll_sum must both be set or both be None")
        if self.content_tokens is not None:
            _check_int("content_tokens", self.content_tokens, 1)
            _check_float("content_nll_sum", self.content_nll_sum)
            if self.content_tokens > self.tokens:
                raise ValueError(f"content_tokens {self.content_tokens} exceeds tokens {self.tokens}")

    @property
    def cluster(self) -> str | None:
        """The group an item was sampled with (its id's part before "/", e.g. a held-out task), if any."""
        return _cluster(self.id)


@dataclasses.dataclass(frozen=True)
class LabelItem:
    """A classification example: gold and predicted class."""

    id: str
    label: int
    pred: int

    def __post_init__(self) -> None:
        _check_str("id", self.id)
        _check_int("label", self.label)
        _check_int("pred", self.pred)

    @property
    def correct(self) -> bool:
        return self.label == self.pred


def _cluster(item_id: str) -> str | None:
    head, sep, _ = item_id.rpartition("/")
    return head.split(":", 1)[-1] if sep else None


@dataclasses.dataclass(frozen=True)
class RougeItem:
    """A generation prompt: RougeL F of the generation (best over the references)."""

    id: str
    score: float

    def __post_init__(self) -> None:
        _check_str("id", self.id)
        _check_float("score", self.score, 0.0, 1.0)

    @property
    def cluster(self) -> str | None:
        """The task the prompt was sampled with (its id's part before "/"), if any."""
        return _cluster(self.id)


def tie_aware_correct(values: Sequence[float], answer: int) -> float:
    """1/k when the answer is among the k choices sharing the top value, else 0 (a tie is a guess among
    the tied, never a win for the first choice)."""
    top = max(values)
    winners = [j for j, v in enumerate(values) if v == top]
    return 1.0 / len(winners) if answer in winners else 0.0


def letter_scores(letter_logprobs: Sequence[float], rotated: Sequence[Sequence[float]] | None) -> tuple[float, ...]:
    """Per original choice, its letter's log-probability — averaged over the four cyclic rotations of the
    choices when `rotated` (rotations 1..3, letters by position) is given."""
    if rotated is None:
        return tuple(letter_logprobs)
    rotations = (letter_logprobs, *rotated)
    # in rotation r, choice j sits at position (j - r) mod 4 and is named by that position's letter
    return tuple(sum(rotations[r][(j - r) % 4] for r in range(4)) / 4 for j in range(4))


def first_max(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda j: (values[j], -j))


@dataclasses.dataclass(frozen=True)
class MMLUItem:
    """An MMLU question: the letter scores and, optionally, the choice log-likelihoods.

    Attributes:
        answer: the correct letter.
        shots: exemplars in its prompt.
        letter_pred: the predicted letter by the answer-letter rule: with `rotated_letter_logprobs`, the
            choice whose own letter has the highest log-probability averaged over the four cyclic rotations
            of the choices (a fixed preference for a letter adds the same to every choice and cancels);
            without, the argmax of `letter_logprobs` (the paper's rule). The first of tied values. None
            (with letter_logprobs None) where the letter rule was not recorded; the choice rule then is.
        letter_logprobs: log-probabilities of the four letter tokens after "Answer:", choices in the
            original order (rotation 0); its argmax is the paper's (and lm-evaluation-harness's) prediction.
        choice_pred: argmax of the length-normalised log-likelihood of " {choice}" (None if not computed).
        choice_logprob_sums / choice_tokens: per choice, the summed log-probability of its tokens and
            their count (so that other normalisations can be derived).
        rotated_letter_logprobs: for rotations r = 1, 2, 3 (position p shows choice (p + r) mod 4), the
            log-probabilities of the letters A..D at positions 0..3 (None if not computed).
    """

    id: str
    subject: str
    answer: str
    shots: int
    letter_pred: str | None
    letter_logprobs: tuple[float, ...] | None
    choice_pred: str | None = None
    choice_logprob_sums: tuple[float, ...] | None = None
    choice_tokens: tuple[int, ...] | None = None
    rotated_letter_logprobs: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        _check_str("id", self.id)
        _check_str("subject", self.subject)
        _check_letter("answer", self.answer)
        _check_int("shots", self.shots)
        choice = (self.choice_pred, self.choice_logprob_sums, self.choice_tokens)
        if any(v is None for v in choice) and any(v is not None for v in choice):
            raise ValueError("choice_pred, choice_logprob_sums and choice_tokens must all be set or all be None")
        if (self.letter_pred is None) != (self.letter_logprobs is None):
            raise ValueError("letter_pred and letter_logprobs must both be set or both be None")
        if self.letter_pred is None:
            if self.choice_pred is None:
                raise ValueError("an MMLU item needs the letter rule or the choice rule (letter_pred and choice_pred are None)")
            if self.rotated_letter_logprobs is not None:
                raise ValueError("rotated_letter_logprobs without letter_logprobs")
        else:
            _check_letter("letter_pred", self.letter_pred)
            self._check_four("letter_logprobs", self.letter_logprobs, _check_float)
        if self.choice_pred is not None:
            _check_letter("choice_pred", self.choice_pred)
            self._check_four("choice_logprob_sums", self.choice_logprob_sums, _check_float)
            self._check_four("choice_tokens", self.choice_tokens, lambda name, v: _check_int(name, v, 1))
        if self.rotated_letter_logprobs is not None:
            rot = self.rotated_letter_logprobs
            if not isinstance(rot, (tuple, list)) or len(rot) != 3:
                raise ValueError(f"rotated_letter_logprobs must hold 3 rotations of 4 values, got {rot!r}")
            for r, values in enumerate(rot, 1):
                if not isinstance(values, (tuple, list)) or len(values) != 4:
                    raise ValueError(f"rotated_letter_logprobs[{r - 1}] must hold 4 values, got {values!r}")
                for i, v in enumerate(values):
                    _check_float(f"rotated_letter_logprobs[{r - 1}][{i}]", v)
            object.__setattr__(self, "rotated_letter_logprobs", tuple(tuple(v) for v in rot))
        if self.letter_pred is not None and self.letter_pred != LETTERS[first_max(self.letter_scores)]:
            raise ValueError(f"letter_pred {self.letter_pred!r} is not the first maximum of the letter scores {self.letter_scores}")
        if self.choice_pred is not None and self.choice_pred != LETTERS[first_max(self.choice_scores)]:
            raise ValueError(f"choice_pred {self.choice_pred!r} is not the first maximum of the length-normalised choice "
                             f"log-likelihoods {self.choice_scores}")  # fmt: skip

    def _check_four(self, name: str, values, check) -> None:
        if not isinstance(values, (tuple, list)) or len(values) != 4:
            raise ValueError(f"{name} must hold 4 values (one per choice), got {values!r}")
        object.__setattr__(self, name, tuple(values))
        for i, v in enumerate(values):
            check(f"{name}[{i}]", v)

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    @property
    def letter_scores(self) -> tuple[float, ...] | None:
        """Per original choice, the score behind `letter_pred` (see `letter_scores`); None if not recorded."""
        if self.letter_logprobs is None:
            return None
        return letter_scores(self.letter_logprobs, self.rotated_letter_logprobs)

    @property
    def raw_letter_pred(self) -> str | None:
        """The argmax of `letter_logprobs` (the original order): the paper's and lm-evaluation-harness's rule."""
        return None if self.letter_logprobs is None else LETTERS[first_max(self.letter_logprobs)]

    @property
    def letter_correct(self) -> float | None:
        """1 if the letter rule picks the answer, 1/k when it ties with k-1 others, else 0; None if not recorded."""
        scores = self.letter_scores
        return None if scores is None else tie_aware_correct(scores, self.answer_index)

    @property
    def choice_scores(self) -> tuple[float, ...] | None:
        """The length-normalised choice log-likelihoods (mean log-probability per token)."""
        if self.choice_logprob_sums is None:
            return None
        return tuple(s / n for s, n in zip(self.choice_logprob_sums, self.choice_tokens))

    @property
    def choice_correct(self) -> float | None:
        scores = self.choice_scores
        return None if scores is None else tie_aware_correct(scores, self.answer_index)


Item = TokenNLL | LabelItem | RougeItem | MMLUItem
ITEM_TYPES: dict[Task, type] = {
    Task.PERPLEXITY: TokenNLL, Task.HELDOUT_NLL: TokenNLL, Task.MMLU: MMLUItem, Task.MMLU_ZERO_SHOT: MMLUItem,
    Task.CLASSIFICATION: LabelItem, Task.ROUGE_L: RougeItem,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ItemResults:
    """The per-item scores of one evaluation, in evaluation order.

    Raises (on construction):
        ValueError: no items, an item of the wrong type for `task`, or a repeated id.
    """

    task: Task
    items: tuple[Item, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task.parse(self.task))
        object.__setattr__(self, "items", tuple(self.items))
        kind = ITEM_TYPES[self.task]
        if not self.items:
            raise ValueError(f"no items for task {self.task.value}")
        for i, item in enumerate(self.items):
            if not isinstance(item, kind):
                raise ValueError(f"items[{i}] of task {self.task.value} must be a {kind.__name__}, got {type(item).__name__}")
        counts = Counter(item.id for item in self.items)
        repeated = [i for i, c in counts.items() if c > 1]
        if repeated:
            raise ValueError(f"{len(repeated)} item id(s) occur more than once, e.g. {repeated[0]!r}")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}

    def with_prefix(self, prefix: str) -> "ItemResults":
        """The same items with `prefix` before every id (e.g. a training seed, "s1:")."""
        return ItemResults(self.task, tuple(dataclasses.replace(item, id=prefix + item.id) for item in self.items))

    @classmethod
    def concat(cls, parts: Sequence["ItemResults"]) -> "ItemResults":
        """The items of several evaluations of one task (their ids must not overlap).

        Raises:
            ValueError: no parts, mixed tasks, or a repeated id.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        tasks = {p.task for p in parts}
        if len(tasks) != 1:
            raise ValueError(f"cannot concatenate items of tasks {sorted(t.value for t in tasks)}")
        return cls(parts[0].task, tuple(item for p in parts for item in p.items))

    def to_text(self) -> str:
        """The file's text (see the module docstring): keys sorted, floats written exactly."""
        rows = [json.dumps(dataclasses.asdict(item), sort_keys=True, allow_nan=False) for item in self.items]
        head = json.dumps({"format": FORMAT, "task": self.task.value})[:-1]
        return head + ', "items": [\n' + ",\n".join(rows) + "\n]}\n"

    def save(self, path: str | Path) -> Path:
        """Writes the file atomically (`qlora.atomic`)."""
        return write_text(path, self.to_text())

    @classmethod
    def load(cls, path: str | Path) -> "ItemResults":
        """Reads and validates a file written by `save`.

        Raises:
            ValueError: the file is not valid JSON, not of this format, or an item has a missing or
                unknown key, a value of the wrong type, a number that is not finite, or a repeated id;
                the message names the file and the key.
        """
        path = Path(path)

        def no_constants(name):  # json accepts NaN / Infinity unless told otherwise
            raise ValueError(f"{path}: {name} is not a finite number")

        try:
            data = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: key 'format' must be {FORMAT!r}, got {got!r}")
        unknown = set(data) - {"format", "task", "items"}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected format, task, items")
        try:
            task = Task.parse(data.get("task"))
        except ValueError as e:
            raise ValueError(f"{path}: key 'task': {e}") from None
        rows = data.get("items")
        if not isinstance(rows, list):
            raise ValueError(f"{path}: key 'items' must be a list, got {type(rows).__name__}")
        kind = ITEM_TYPES[task]
        names = [f.name for f in dataclasses.fields(kind)]
        # keys added later with a default (e.g. MMLU's rotated_letter_logprobs) may be absent in older files
        required = {f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING or f.name in _REQUIRED_DEFAULTED}
        items = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not required <= set(row) <= set(names):
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                optional = [n for n in names if n not in required]
                raise ValueError(f"{path}: items[{i}] must have exactly the keys {[n for n in names if n in required]}"
                                 f"{f' (and optionally {optional})' if optional else ''}, got {keys}")  # fmt: skip
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
            try:
                items.append(kind(**values))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: items[{i}] (id {row.get('id')!r}): {e}") from None
        try:
            return cls(task, tuple(items))
        except ValueError as e:
            raise ValueError(f"{path}: key 'items': {e}") from None
