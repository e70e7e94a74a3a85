#!/usr/bin/env python
"""Independent recomputation of a findings report's paired comparisons from the committed per-item files.

Issue 22 asks that the verdicts of the findings report be reproduced by "an independent recomputation from
the committed per-item files". This script is that recomputation. It deliberately imports nothing from the
`qlora` package (standard library and numpy only) and re-derives every statistic from the report's own
explanation and the per-item file format (`qlora-items/1`):

    python scripts/recompute_findings.py --findings reports/findings.md --items findings/items [--out FILE]

What it recomputes, per table row `| comparison | statistic | 95% interval | n | smallest detectable | verdict |`:

* "A vs B | perplexity ratio R" (Table 2 claims, e.g. (a), (b), (k), (l)): the items of task `perplexity`
  of both rows are paired by id; perplexity = exp(sum of nll_sum / sum of tokens) over the paired windows
  (pooled per token, not a mean of per-window perplexities); R = perplexity(A) / perplexity(B).
* "A vs B | +D pp" (accuracy difference; zero-shot MMLU `mmlu_0shot` when the row has no task prefix, else
  the prefix's task, e.g. "mmlu: ..."): per question the credit of each row, 1 when the rule's top score
  is the answer, 1/k when the answer ties with k-1 other choices at the top, else 0; the rule is the
  length-normalised choice log-likelihood (sum / tokens) for zero-shot MMLU (Table 2's rule) and the
  answer-letter rule (letter log-probabilities, averaged over the four cyclic rotations when recorded) for
  few-shot MMLU; D = 100 * (mean credit A - mean credit B) over the paired questions.
* the interval: its own paired percentile bootstrap over the paired items (2,000 resamples, numpy's
  default_rng, seed `--seed`), not the report's BCa / Newcombe intervals, so endpoints differ a little.
* the decision the interval implies. "A beats B" (the row's first side is the claimed better one): holds
  when the interval lies wholly on A's better side of no difference (ratio < 1, difference > 0), does not
  hold when wholly on B's side, else inconclusive. "A matches B" (the comparison says "(within ±m%)", or the
  claim says "matches" and the report's header gives the margin, e.g. "perplexity ±0.5%"): holds when the
  interval lies within [1 - m, 1 + m] (accuracy: [-m, +m] pp), does not hold when wholly outside, else
  inconclusive.

A row fails (exit status 1) when
* its point statistic differs from the printed one by more than half a unit in the last printed digit,
* its paired item count differs from the printed n,
* its item files are missing or ambiguous, or
* the recomputed interval's decision differs from the printed verdict and the printed interval is not
  "borderline": an endpoint of the printed interval lies within 10% of the printed interval's width of a
  decision boundary (1 or 0, or a margin's edge). A borderline flip is reported as "borderline", not a
  failure.

Fine-tuning rows (claims (0), (c), (d)), from the evaluations of the tuned rows (one file per seed, folder
`eval`) and of their untuned bases (one file, no seed):

* "A vs untuned B | -0.5476 nats/token" (claim (0)): A's change over its untuned base, held-out NLL with
  the template's tokens left out (content_nll_sum / content_tokens) unless the row says "with the
  template's tokens". Pooled over seeds per token: sum over every seed's items of A's NLL / their tokens
  minus the base's (the base paired with each seed, so counted once per seed). Every seed scores the same
  examples with the same tokens, so this equals the mean of the per-seed values. Rule "beats": below 0.
* "<task>: A's gain - B's gain | +0.80 pp" (differences in differences): (A - A's base) - (B - B's base)
  pooled over seeds; MMLU credit by the choice rule (letter rule when the row says "letter"), in pp;
  RougeL as points (100 x the items' F in [0, 1]). Rule: "matches" within the header's margin (accuracy
  ±m pp, RougeL ±m points) when the claim says "matches", else "beats".
* "share of B's gain that A recovers (>= 90%)": 100 x A's change / B's change ("recovers X% of the
  gain"); holds when the interval lies at or above the threshold, and only when B's own gain has an
  interval above 0. A row "no gain to share: ... is +0.548 [..]" is checked as B's own gain (the NLL drop)
  with that decision: its interval reaching 0 leaves the share inconclusive.
* the interval: a cluster bootstrap drawing whole held-out tasks (the id's part before "/") for held-out
  NLL and RougeL, and whole questions (all seeds of a question together) for MMLU; 2,000 resamples.
* the comparison's "(per-seed mean over S seeds: V, t interval [lo, hi])": the same statistic per seed
  (seed s of A paired with seed s of B), its mean and 95% Student t interval over seeds, checked to the
  printed digits like the statistic. For every row pooled over two or more seeds the decision must follow
  from the per-seed t interval too, else inconclusive (the report's rule) — whether or not the row prints
  it (a row that does not is noted, and a verdict that ignored it shows as a FLIP).
* n: the (seed, item) pairs and, where printed ("in 8 tasks"), the number of tasks.

* adapter variants (claims (f), (g)): "all-linear A" is the row with adapters on every linear layer at the
  default rank (item files without a variant), "attention-only [A]" the files of variant "attention",
  "rank N" those of variant "rN" (rank 64, the default, the files without a variant). A side that names
  no row takes the other side's; where neither does ("rank 8" vs "rank 64"), the row is the one tuned row
  whose files carry that variant. Every variant row's untuned base is its row's base.

Rows it cannot recompute (tuned rows compared without an untuned base, classification, the data-type and
analysis rows) are listed as skipped and do not fail. The claim-level verdicts (### <model>: <verdict>)
are recomputed from the rows ("holds" only if every counted part holds, "does not hold" if any does not)
where every counted row of that claim and model was recomputed. As a note (never a failure), each decided
row's one-sided bootstrap p-value is Holm-adjusted within its claim and model (the report corrects
decided parts for multiplicity) and a decision that would not survive is marked.

Exit status: 0 all recomputed rows reproduce (borderlines allowed), 1 some row fails, 2 usage / parse
error or nothing to recompute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

RESAMPLES = 2000
BORDERLINE_SHARE = 0.10  # of the printed interval's width
LETTERS = ("A", "B", "C", "D")

# --- the findings markdown ----------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    claim: str  # "(a)"
    claim_title: str
    model: str
    model_verdict: str
    comparison: str
    statistic: str
    interval: str
    n: str
    detectable: str
    verdict: str


@dataclasses.dataclass
class Findings:
    rows: list[Row]
    header: str  # the text before the first "## " section
    summary: dict[tuple[str, str], str]  # (claim label, model) -> verdict in the summary table


def _cells(line: str) -> list[str]:
    inner = line.strip()
    if inner.startswith("|"):
        inner = inner[1:]
    if inner.endswith("|"):
        inner = inner[:-1]
    return [c.strip() for c in inner.split("|")]


def _plain_verdict(text: str) -> str:
    return text.replace("*", "").strip()


def parse_findings(text: str) -> Findings:
    rows: list[Row] = []
    summary: dict[tuple[str, str], str] = {}
    header_lines: list[str] = []
    claim = title = model = model_verdict = None
    in_table = in_summary = False
    seen_section = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("## "):
            seen_section = True
            in_table = False
            in_summary = s[3:].strip().lower() == "summary"
            m = re.match(r"##\s+(\([^)]*\))\s*(.*)$", s)
            claim, title = (m.group(1), m.group(2).strip()) if m else (None, s[3:].strip())
            model = model_verdict = None
            continue
        if not seen_section:
            header_lines.append(line)
            continue
        if s.startswith("### "):
            in_table = False
            body = s[4:].strip()
            head, sep, verdict = body.rpartition(":")
            model, model_verdict = (head.strip(), verdict.strip()) if sep else (body, "")
            continue
        if not s.startswith("|"):
            in_table = False
            continue
        cells = _cells(s)
        if in_summary:
            if len(cells) == 3 and cells[0] not in ("claim",) and not set(cells[0]) <= set("-: "):
                m = re.match(r"(\([^)]*\))", cells[0])
                if m:
                    summary[(m.group(1), cells[1])] = _plain_verdict(cells[2])
            continue
        if cells[:2] == ["comparison", "statistic"]:
            in_table = True
            continue
        if not in_table or all(set(c) <= set("-: ") for c in cells):
            continue
        if len(cells) != 6:
            raise ValueError(f"a comparison row with {len(cells)} cells, not 6: {line!r}")
        rows.append(Row(claim or "?", title or "", model or "?", model_verdict or "", *cells))
    return Findings(rows, "\n".join(header_lines), summary)


def perplexity_margin_from_header(header: str) -> float | None:
    m = re.search(r"perplexity\s*±\s*([\d.]+)\s*%", header)
    return float(m.group(1)) / 100 if m else None


def accuracy_margin_from_header(header: str) -> float | None:
    m = re.search(r"accuracy\s*±\s*([\d.]+)\s*pp", header)
    return float(m.group(1)) if m else None


def rouge_margin_from_header(header: str) -> float | None:
    m = re.search(r"RougeL\s*±\s*([\d.]+)\s*points", header)
    return float(m.group(1)) if m else None


def share_threshold_from_header(header: str) -> float | None:
    """"recovers at least 90% of LoRA BF16's held-out NLL gain" -> 90.0 (percent)."""
    m = re.search(r"recovers at least\s*([\d.]+)\s*%", header)
    return float(m.group(1)) if m else None


# --- the per-item files --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ItemFile:
    path: Path
    task: str
    model: str
    method: str
    quant: str
    variant: str | None
    seed: int | None


def model_key(name: str) -> str:
    """Display and file names of a model compared case- and punctuation-blind (file names are sanitised)."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def scan_items(root: Path) -> list[ItemFile]:
    files = []
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            if not name.endswith(".json"):
                continue
            parts = name[: -len(".json")].split("__")
            if len(parts) < 4:
                continue
            seed = None
            if re.fullmatch(r"s\d+", parts[-1]):
                seed = int(parts[-1][1:])
                parts = parts[:-1]
            if len(parts) not in (4, 5):
                continue
            variant = parts[4] if len(parts) == 5 else None
            files.append(ItemFile(Path(dirpath) / name, parts[0], parts[1], parts[2], parts[3], variant, seed))
    return files


def read_items(path: Path) -> tuple[str, list[dict]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != "qlora-items/1" or not isinstance(data.get("items"), list):
        raise ValueError(f"{path}: not a qlora-items/1 file")
    return data["task"], data["items"]


# --- display names -> file names -----------------------------------------------------------------------

METHODS = {"qlora": "qlora", "lora": "lora", "full": "full", "untuned": "none"}
# display names whose plain normalisation is not the file's quant name (qualifiers of the default grid,
# the block size in AF4's name)
QUANT_ALIASES = {"fp4_e2m1_bnb_grid": "fp4", "fp4_e2m1": "fp4", "fp4_bnb_grid": "fp4", "af4_64": "af4"}


def normalise_quant(display: str) -> str:
    s = display.lower().replace("+", " ")
    s = re.sub(r"[(),]", " ", s)
    s = re.sub(r"[^a-z0-9]+", "_", s).strip("_")
    return QUANT_ALIASES.get(s, s)


def split_side(side: str) -> tuple[str, str]:
    """("QLoRA NF4 + DQ") -> ("qlora", "nf4_dq"); ("NF4 (block 64)") -> ("none", "nf4")."""
    side = re.sub(r"\(block \d+\)", "", side).strip()
    first, _, rest = side.partition(" ")
    if first.lower() in METHODS and rest:
        return METHODS[first.lower()], normalise_quant(rest)
    return "none", normalise_quant(side)


DEFAULT_RANK = 64  # the LoRA rank of the rows without a variant (the paper's and the findings profile's)
VARIANT_SIDE = re.compile(r"^(?:(?P<all>all-linear)|(?P<attention>attention-only)|rank (?P<rank>\d+))(?:\s+(?P<rest>.*))?$", re.I)


def split_variant(side: str) -> tuple[str | None, str]:
    """"attention-only QLoRA NF4 + DQ" -> ("attention", "QLoRA NF4 + DQ"); "rank 8" -> ("r8", "");
    "all-linear QLoRA NF4 + DQ" and "rank 64" -> (None, ...): the files without a variant."""
    m = VARIANT_SIDE.match(side.strip())
    if not m:
        return None, side.strip()
    rest = (m.group("rest") or "").strip()
    if m.group("attention"):
        return "attention", rest
    if m.group("rank") and int(m.group("rank")) != DEFAULT_RANK:
        return f"r{int(m.group('rank'))}", rest
    return None, rest


# --- statistics ----------------------------------------------------------------------------------------


def tie_credit(scores, answer_index: int) -> float:
    top = max(scores)
    winners = [j for j, v in enumerate(scores) if v == top]
    return 1.0 / len(winners) if answer_index in winners else 0.0


def mmlu_credit(item: dict, rule: str) -> float:
    answer = LETTERS.index(item["answer"])
    if rule == "choice":
        if item.get("choice_logprob_sums") is None:
            raise ValueError(f"item {item['id']}: no choice log-likelihoods for the choice rule")
        scores = [s / n for s, n in zip(item["choice_logprob_sums"], item["choice_tokens"])]
    else:
        if item.get("letter_logprobs") is None:
            raise ValueError(f"item {item['id']}: no letter log-probabilities for the letter rule")
        rotations = [item["letter_logprobs"]] + list(item.get("rotated_letter_logprobs") or [])
        if len(rotations) == 4:  # rotation r shows choice j at position (j - r) mod 4
            scores = [sum(rotations[r][(j - r) % 4] for r in range(4)) / 4 for j in range(4)]
        else:
            scores = list(item["letter_logprobs"])
    return tie_credit(scores, answer)


def bootstrap_weights(n: int, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """resamples x n counts: how often each item is drawn in each resample (n draws with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


def cluster_bootstrap_weights(labels: list[str], rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """resamples x items: each resample draws as many clusters as there are, with replacement, and every item
    counts as often as its cluster was drawn (a cluster bootstrap: whole held-out tasks, whole questions)."""
    names = sorted(set(labels))
    index = {c: k for k, c in enumerate(names)}
    counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=resamples)
    return counts[:, np.array([index[c] for c in labels])].astype(float)


def perplexity_ratio(nll_a, tok_a, nll_b, tok_b, weights=None):
    """exp(sum nll / sum tokens) of A over that of B; with `weights` (resamples x n) one ratio per resample."""
    if weights is None:
        return math.exp(nll_a.sum() / tok_a.sum() - nll_b.sum() / tok_b.sum())
    return np.exp(weights @ nll_a / (weights @ tok_a) - weights @ nll_b / (weights @ tok_b))


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with an integer df, from the closed-form two-sided
    probability P(|T| <= t) (Abramowitz & Stegun 26.7.3-4) inverted by bisection (no scipy)."""

    def central(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        c2, s = math.cos(theta) ** 2, math.sin(theta)
        term = total = 1.0
        if df % 2:  # odd
            for k in range(1, (df - 3) // 2 + 1):
                term *= 2 * k / (2 * k + 1) * c2
                total += term
            return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        return s * total

    target, lo, hi = 2 * p - 1, 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if central(mid) < target else (lo, mid)
    return (lo + hi) / 2


def t_interval(values) -> tuple[float, float, float]:
    """(mean, lower, upper): the 95% t interval of the mean of per-seed values."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = student_t_quantile(0.975, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half

# --- decisions -----------------------------------------------------------------------------------------

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclasses.dataclass
class Rule:
    kind: str  # "beats", "matches" or "at least" (a share of a gain: holds when the interval lies at or above `null`)
    null: float  # no difference: 1 for a ratio, 0 for a difference; for "at least": the threshold
    lower_is_better: bool  # for "beats": the first side's better side
    margin: float | None = None  # for "matches": the half-width, in the statistic's units (absolute)

    def boundaries(self) -> list[float]:
        if self.kind in ("beats", "at least"):
            return [self.null]
        return [self.null - self.margin, self.null + self.margin]

    def decide(self, lo: float, hi: float) -> str:
        if self.kind == "beats":
            better = hi < self.null if self.lower_is_better else lo > self.null
            worse = lo > self.null if self.lower_is_better else hi < self.null
            return HOLDS if better else FAILS if worse else INCONCLUSIVE
        if self.kind == "at least":
            return HOLDS if lo >= self.null else FAILS if hi < self.null else INCONCLUSIVE
        a, b = self.boundaries()
        if lo >= a and hi <= b:
            return HOLDS
        if hi < a or lo > b:
            return FAILS
        return INCONCLUSIVE

    def p_value(self, draws: np.ndarray, decision: str) -> float | None:
        """One-sided bootstrap p-value of a decided part: the share of resamples on the far side of the
        boundary the decision crossed (for "matches" holds: the larger of the two shares, TOST)."""
        def share(mask):
            return (mask.sum() + 1) / (draws.size + 1)

        if decision == INCONCLUSIVE:
            return None
        if self.kind == "beats":
            on_a_side = (decision == HOLDS) == self.lower_is_better  # the decided side is below the null
            return share(draws >= self.null) if on_a_side else share(draws <= self.null)
        if self.kind == "at least":
            return share(draws < self.null) if decision == HOLDS else share(draws >= self.null)
        a, b = self.boundaries()
        if decision == HOLDS:
            return max(share(draws <= a), share(draws >= b))
        centre = float(np.median(draws))
        return share(draws >= a) if centre < a else share(draws <= b)

    def describe(self) -> str:
        if self.kind == "beats":
            return f"beats ({'<' if self.lower_is_better else '>'} {self.null:g})"
        if self.kind == "at least":
            return f"at least {self.null:g}"
        return f"matches ([{self.null - self.margin:g}, {self.null + self.margin:g}])"


def parse_interval(text: str) -> tuple[float, float] | None:
    m = re.match(r"\[\s*([-+]?[\d.eE+-]+)\s*,\s*([-+]?[\d.eE+-]+)\s*\]", text.strip())
    return (float(m.group(1)), float(m.group(2))) if m else None


def half_unit(number_text: str) -> float:
    """Half a unit in the last printed digit of a number as printed."""
    _, _, decimals = number_text.partition(".")
    return 0.5 * 10.0 ** (-len(decimals))


def parse_printed_verdict(cell: str) -> tuple[str | None, bool]:
    """(decision, counted): "**holds**" -> ("holds", True); "(holds; not counted)" -> ("holds", False)."""
    plain = _plain_verdict(cell).strip("()")
    counted = "not counted" not in plain
    head = plain.split(";")[0].strip()
    return (head if head in (HOLDS, FAILS, INCONCLUSIVE) else None), counted


# --- fine-tuning rows ----------------------------------------------------------------------------------

NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?"
PER_SEED = re.compile(r"per-seed mean over (?P<seeds>\d+) seeds:\s*(?P<value>.+?),\s*t interval\s*(?P<interval>\[[^\]]*\])")
PER_SEED_PAREN = re.compile(r"\s*\(per-seed mean over [^()]*(?:\([^()]*\)[^()]*)*\)")
TUNED_VS_UNTUNED = re.compile(r"^(?P<a>.+?) vs untuned (?P<b>.+?)$")
GAIN_MINUS_GAIN = re.compile(r"^(?P<a>.+?)'s gain\s+-\s+(?P<b>.+?)'s gain$")
SHARE_OF = re.compile(r"share of (?P<b>.+?)'s gain that (?P<a>.+?) recovers")
UNIT_STAT = re.compile(r"^\s*(?P<value>[-+−]?\d[\d,]*(?:\.\d+)?)\s*(?P<unit>nats/token|pp|RougeL points)\b")
UNIT_TASK = {"nats/token": "heldout_nll", "pp": "mmlu", "RougeL points": "rougeL"}


def task_of(prefix: str) -> str | None:
    """A row's task prefix ("mmlu", "rougeL", "held-out NLL (template tokens left out)") -> the item files' task."""
    p = prefix.lower()
    if "held-out nll" in p or "heldout_nll" in p:
        return "heldout_nll"
    if "rouge" in p:
        return "rougeL"
    if "mmlu" in p:
        return "mmlu_0shot" if "0shot" in p or "0-shot" in p or "zero-shot" in p else "mmlu"
    return None


def split_side_display_quant(display: str) -> str:
    """"QLoRA NF4 + DQ" -> "NF4 + DQ" (the display name of its untuned base, less "untuned ")."""
    first, _, rest = display.strip().partition(" ")
    return rest if first.lower() in METHODS and rest else display


def set_sides(spec: dict, a: str, b: str) -> None:
    """The tuned rows a and b of a fine-tuning spec and their untuned bases ("untuned <quant>")."""
    spec.update(a=a, b=b, base_a="untuned " + split_side_display_quant(a), base_b="untuned " + split_side_display_quant(b))


def parse_interval_loose(text: str) -> tuple[float, float] | None:
    """"[98.3%, 145.1%]" or "[-0.87, +2.40]" -> (lo, hi)."""
    m = re.match(r"\s*\[\s*(" + NUMBER + r")\s*%?\s*,\s*(" + NUMBER + r")\s*%?\s*\]", text.replace("−", "-"))
    return (float(m.group(1).replace(",", "")), float(m.group(2).replace(",", ""))) if m else None


def item_value(task: str, item: dict, spec: dict) -> tuple[float, float]:
    """(numerator, denominator) of one item: held-out NLL (nats, tokens), with or without the template's
    tokens; MMLU (100 x credit, 1); RougeL (100 x F, 1): the table prints RougeL points."""
    if task == "heldout_nll":
        if spec["tokens"] == "content":
            if item.get("content_nll_sum") is None or item.get("content_tokens") is None:
                raise ValueError(f"item {item['id']}: no content_nll_sum / content_tokens (template tokens left out)")
            return float(item["content_nll_sum"]), float(item["content_tokens"])
        return float(item["nll_sum"]), float(item["tokens"])
    if task in ("mmlu", "mmlu_0shot"):
        return 100.0 * mmlu_credit(item, spec["rule"]), 1.0
    if task == "rougeL":
        score = float(item["score"])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"item {item['id']}: RougeL score {score} outside [0, 1] (expected an F, not points)")
        return 100.0 * score, 1.0
    raise ValueError(f"task {task!r}: no per-item value for fine-tuning rows")

# --- one row -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    row: Row
    status: str  # reproduced | borderline | MISMATCH | FLIP | MISSING | skipped
    reason: str = ""
    recomputed: float | None = None
    printed_value: float | None = None
    tolerance: float | None = None
    interval: tuple[float, float] | None = None
    printed_interval: tuple[float, float] | None = None
    n: int | None = None
    rule: Rule | None = None
    decision: str | None = None
    printed_decision: str | None = None
    counted: bool = True
    p_value: float | None = None
    holm_note: str = ""
    digits: int | None = None  # decimals to show the recomputed interval with (default: by the statistic's kind)

    @property
    def failed(self) -> bool:
        return self.status in ("MISMATCH", "FLIP", "MISSING")


class Recomputer:
    def __init__(self, findings: Findings, items_root: Path, seed: int):
        self.findings = findings
        self.files = scan_items(items_root)
        self.rng = np.random.default_rng(seed)
        self.ppl_margin = perplexity_margin_from_header(findings.header)
        self.acc_margin = accuracy_margin_from_header(findings.header)
        self.rouge_margin = rouge_margin_from_header(findings.header)
        self.share_threshold = share_threshold_from_header(findings.header)
        self._cache: dict[Path, list[dict]] = {}
        self.failed_runs: dict[str, None] = {}  # classification runs left out (not above their majority class), in order

    # the items of one row of a table (one side of a comparison)
    def find(self, task: str, model: str, method: str, quant: str, stage: str | None = None,
             variant: str | None = None) -> list[ItemFile]:  # fmt: skip
        hits = [f for f in self.files if f.task == task and model_key(f.model) == model_key(model)
                and f.method == method and f.quant == quant and f.variant == variant]  # fmt: skip
        if task in ("perplexity", "mmlu_0shot"):  # Table 2's evaluations of the untuned base models
            stage = stage or "base"
        if stage:  # e.g. the fine-tuning rows' evaluations (folder "eval"), not the main run's (folder "main")
            hits = [f for f in hits if stage in f.path.parts] or hits
        return hits

    def load_side(self, task: str, model: str, method: str, quant: str, stage: str | None = None,
                  variant: str | None = None) -> dict[str, dict]:  # fmt: skip
        hits = self.find(task, model, method, quant, stage, variant)
        if not hits:
            known = sorted({f.quant for f in self.files if f.task == task and model_key(f.model) == model_key(model)})
            what = f"{method} / {quant}" + (f" / variant {variant}" if variant else "")
            raise LookupError(f"no {task} items for {model} / {what} (quants with items: {', '.join(known) or 'none'})")
        seeded = [f for f in hits if f.seed is not None]
        if seeded and len(seeded) != len(hits):
            raise LookupError(f"{task} items for {model} / {method} / {quant}: seeded and unseeded files mixed")
        if not seeded and len(hits) > 1:
            texts = {f.path.read_bytes() for f in hits}
            if len(texts) > 1:
                raise LookupError(f"ambiguous: {len(hits)} different files for {task} / {model} / {method} / {quant}: "
                                  + ", ".join(str(f.path) for f in hits))  # fmt: skip
            hits = hits[:1]
        if seeded and len({f.seed for f in seeded}) != len(seeded):
            raise LookupError(f"ambiguous: a seed occurs twice for {task} / {model} / {method} / {quant}")
        out: dict[str, dict] = {}
        for f in hits:
            if f.path not in self._cache:
                file_task, items = read_items(f.path)
                if file_task != task:
                    raise LookupError(f"{f.path}: its task is {file_task!r}, its name says {task!r}")
                self._cache[f.path] = items
            prefix = f"s{f.seed}:" if f.seed is not None else ""
            for item in self._cache[f.path]:
                key = prefix + item["id"]
                if key in out:
                    raise LookupError(f"{f.path}: item id {key!r} occurs twice")
                out[key] = item
        return out

    def rule_for(self, row: Row, comparison: str, accuracy: bool) -> Rule:
        null = 0.0 if accuracy else 1.0
        within = re.search(r"\(within\s*±\s*([\d.]+)\s*(%|pp)\)", comparison)
        if within:
            value = float(within.group(1))
            return Rule("matches", null, not accuracy, value / 100 if within.group(2) == "%" else value)
        title = row.claim_title.lower()
        if " match" in title and "beat" not in title:
            margin = self.acc_margin if accuracy else self.ppl_margin
            if margin is None:
                raise LookupError("a 'matches' claim without a margin in the report's header")
            return Rule("matches", null, not accuracy, margin)
        return Rule("beats", null, lower_is_better=not accuracy)

    def recompute(self, row: Row) -> Result:
        decision, counted = parse_printed_verdict(row.verdict)
        res = Result(row, "skipped", printed_decision=decision, counted=counted)
        stat = row.statistic
        comparison = row.comparison
        spec = self.finetune_spec(row)
        if spec is not None:
            return self.recompute_finetune(row, spec)
        ppl = re.match(r"perplexity ratio\s+([\d.]+)\s*$", stat)
        acc = re.match(r"([-+−]?[\d.]+)\s*pp\b", stat)
        if " vs " not in comparison or not (ppl or acc) or "gain" in comparison or "gain" in stat:
            res.reason = "not a recomputable comparison (only perplexity ratios, accuracy differences and fine-tuning gains)"
            return res
        if "per-seed mean" in comparison:
            if acc and comparison.lower().startswith("classification:"):
                return self.recompute_classification(row, acc.group(1))
            res.reason = "rows pooled over seeds with a t interval: not recomputed"
            return res
        task = "perplexity"
        body = re.sub(r"\(within[^)]*\)", "", comparison).strip()
        if acc:
            task = "mmlu_0shot"
            prefix = re.match(r"([A-Za-z0-9_ -]+):\s+(.*)$", body)
            if prefix:
                name = prefix.group(1).strip().lower().replace(" ", "_").replace("-", "")
                task = {"mmlu_0shot": "mmlu_0shot", "mmlu_0": "mmlu_0shot", "mmlu": "mmlu"}.get(name)
                body = prefix.group(2)
                if task is None:
                    res.reason = f"accuracy of task {prefix.group(1)!r}: not recomputed"
                    return res
        left, _, right = body.partition(" vs ")
        (method_a, quant_a), (method_b, quant_b) = split_side(left), split_side(right)
        try:
            res.rule = self.rule_for(row, comparison, accuracy=bool(acc))
            a = self.load_side(task, row.model, method_a, quant_a)
            b = self.load_side(task, row.model, method_b, quant_b)
        except (LookupError, ValueError) as e:
            res.status, res.reason = "MISSING", str(e)
            return res
        ids = [i for i in a if i in b]
        res.n = len(ids)
        printed_n = re.match(r"([\d,]+)", row.n)
        if not ids:
            res.status, res.reason = "MISSING", "no item ids in common"
            return res
        weights = bootstrap_weights(len(ids), self.rng)
        if ppl:
            nll_a = np.array([a[i]["nll_sum"] for i in ids], float)
            tok_a = np.array([a[i]["tokens"] for i in ids], float)
            nll_b = np.array([b[i]["nll_sum"] for i in ids], float)
            tok_b = np.array([b[i]["tokens"] for i in ids], float)
            res.recomputed = perplexity_ratio(nll_a, tok_a, nll_b, tok_b)
            draws = perplexity_ratio(nll_a, tok_a, nll_b, tok_b, weights)
            printed = ppl.group(1)
        else:
            rule = "choice" if task == "mmlu_0shot" else "letter"
            try:
                diff = np.array([mmlu_credit(a[i], rule) - mmlu_credit(b[i], rule) for i in ids], float) * 100
            except (KeyError, ValueError) as e:
                res.status, res.reason = "MISSING", f"MMLU credit: {e}"
                return res
            res.recomputed = float(diff.mean())
            draws = weights @ diff / len(ids)
            printed = acc.group(1).replace("−", "-")
        res.printed_value = float(printed)
        res.tolerance = half_unit(printed.lstrip("+-"))
        res.interval = percentile_interval(draws)
        res.printed_interval = parse_interval(row.interval)
        res.decision = res.rule.decide(*res.interval)
        if res.decision != INCONCLUSIVE:
            res.p_value = res.rule.p_value(draws, res.decision)
        problems = []
        if abs(res.recomputed - res.printed_value) > res.tolerance + 1e-12:
            problems.append(f"statistic {res.recomputed:.6g} vs printed {printed} (tolerance ±{res.tolerance:g})")
        if printed_n and int(printed_n.group(1).replace(",", "")) != res.n:
            problems.append(f"{res.n} paired items, printed n {row.n}")
        self.settle(res, problems, decision, [res.printed_interval])
        if res.status == "reproduced" and res.printed_interval and decision is not None \
                and res.rule.decide(*res.printed_interval) != decision:
            res.reason = f"note: the printed interval itself implies {res.rule.decide(*res.printed_interval)}"
        return res

    # --- classification rows (the encoder's fine-tuning rows): accuracy differences pooled over seeds -------

    def classification_runs(self, model: str, display: str) -> dict[int, dict[str, float]]:
        """{seed: {example id: 1.0 when predicted right}} of a tuned classification row, without its failed
        runs: a run whose accuracy is not above its test items' majority-class share learned nothing."""
        kept = {}
        for seed, items in self._by_seed("classification", model, display).items():
            labels = [item["label"] for item in items.values()]
            majority = max(labels.count(v) for v in set(labels)) / len(labels)
            right = {i: float(item["pred"] == item["label"]) for i, item in items.items()}
            accuracy = sum(right.values()) / len(right)
            if accuracy > majority:
                kept[seed] = right
            else:
                self.failed_runs[f"{model} {display} seed {seed}: accuracy {100 * accuracy:.1f}% <= majority class {100 * majority:.1f}%"] = None
        return kept

    def recompute_classification(self, row: Row, printed: str) -> Result:
        """"classification: A vs B (per-seed mean over N seeds: ...)": A's accuracy minus B's in pp, paired seed by
        seed on the same examples and pooled over the seeds both rows kept; a bootstrap over examples (all seeds
        of one together) and the per-seed mean's t interval, which must agree for a decision."""
        decision, counted = parse_printed_verdict(row.verdict)
        res = Result(row, "skipped", printed_decision=decision, counted=counted)
        body = PER_SEED_PAREN.sub("", row.comparison).strip().partition(":")[2]
        left, _, right = re.sub(r"\(within[^)]*\)", "", body).strip().partition(" vs ")
        try:
            res.rule = self.rule_for(row, row.comparison, accuracy=True)
            a, b = self.classification_runs(row.model, left.strip()), self.classification_runs(row.model, right.strip())
        except (LookupError, ValueError, KeyError) as e:
            res.status, res.reason = "MISSING", str(e)
            return res
        seeds = sorted(set(a) & set(b))
        ids = [i for i in a[seeds[0]] if all(i in a[s] and i in b[s] for s in seeds)] if seeds else []
        if not ids:
            res.status, res.reason = "MISSING", "no seeds or example ids in common"
            return res
        diff = np.array([[a[s][i] - b[s][i] for i in ids] for s in seeds]) * 100  # [seeds, examples]
        per_example = diff.mean(0)  # one cluster per example: its seeds resampled together
        weights = bootstrap_weights(len(ids), self.rng)
        res.recomputed = float(per_example.mean())
        draws = weights @ per_example / len(ids)
        res.interval = percentile_interval(draws)
        res.n = len(seeds) * len(ids)
        seed_mean, t_lo, t_hi = t_interval(diff.mean(1))
        res.printed_value = float(printed.replace("−", "-"))
        res.tolerance = half_unit(printed.lstrip("+-−"))
        res.printed_interval = parse_interval(row.interval)
        problems = []
        if abs(res.recomputed - res.printed_value) > res.tolerance + 1e-12:
            problems.append(f"statistic {res.recomputed:.6g} vs printed {printed} (tolerance ±{res.tolerance:g})")
        printed_n = re.match(r"([\d,]+)", row.n)
        if printed_n and int(printed_n.group(1).replace(",", "")) != res.n:
            problems.append(f"{res.n} paired examples over seeds, printed n {row.n}")
        ps = PER_SEED.search(row.comparison)
        printed_t = parse_interval_loose(ps.group("interval")) if ps else None
        if ps and int(ps.group("seeds")) != len(seeds):
            problems.append(f"{len(seeds)} seeds kept by both rows, printed {ps.group('seeds')}")
        if printed_t:
            ends = re.findall(NUMBER, ps.group("interval").replace("−", "-"))
            if any(abs(got - float(text)) > half_unit(text.lstrip("+-")) + 1e-12 for got, text in zip((t_lo, t_hi), ends)):
                problems.append(f"t interval [{t_lo:.6g}, {t_hi:.6g}] vs printed {ps.group('interval')}")
        boot, by_t = res.rule.decide(*res.interval), res.rule.decide(t_lo, t_hi)
        res.decision = boot if boot == by_t else INCONCLUSIVE
        if res.decision != INCONCLUSIVE:
            res.p_value = res.rule.p_value(draws, res.decision)
        note = (f"pooled over {len(seeds)} seed(s) x {len(ids)} examples; bootstrap over examples (seeds together); per-seed "
                f"{', '.join(f'{v:.4g}' for v in diff.mean(1))}; mean {seed_mean:.4g}, t interval [{t_lo:.4g}, {t_hi:.4g}]"
                + (f"; bootstrap says {boot}, t interval {by_t}: inconclusive" if boot != by_t else ""))  # fmt: skip
        return self.settle(res, problems, decision, [res.printed_interval, printed_t], note)

    # --- fine-tuning rows: gains over the untuned base, differences in differences, shares of a gain ------

    def finetune_spec(self, row: Row) -> dict | None:
        """What a fine-tuning row compares (None: not such a row). Keys: kind ("gain": a tuned row vs its
        untuned base; "did": A's gain - B's gain; "share": the share of B's gain that A recovers; "no gain":
        that share's row when B's own gain was not established), task, a and b (display names of the tuned
        rows; b None for "gain"), base_a / base_b (the untuned bases' display names), tokens ("content" or
        "all" for held-out NLL), per_seed (the printed "(per-seed mean ...)" match or None)."""
        comparison, stat = row.comparison, row.statistic
        per_seed = PER_SEED.search(comparison)
        body = PER_SEED_PAREN.sub("", comparison).strip()
        prefix, sep, rest = body.partition(": ")
        if not sep:
            prefix, rest = "", body
        spec = {"per_seed": per_seed, "tokens": "all" if "with the template" in prefix.lower() else "content",
                "rule": "letter" if "letter" in comparison.lower() else "choice", "b": None, "base_b": None}
        m = TUNED_VS_UNTUNED.match(rest)
        if m and UNIT_STAT.match(stat):
            spec.update(kind="gain", a=m.group("a").strip(), base_a="untuned " + m.group("b").strip())
            spec["task"] = task_of(prefix) or UNIT_TASK[UNIT_STAT.match(stat).group("unit")]
            return spec
        m = GAIN_MINUS_GAIN.match(rest)
        unmeasured = stat.startswith("not measured") and task_of(prefix)  # skipped as such, not as "not recomputable"
        if m and (UNIT_STAT.match(stat) or unmeasured):
            spec.update(kind="did", a=m.group("a").strip(), b=m.group("b").strip())
            spec["task"] = task_of(prefix) or UNIT_TASK[UNIT_STAT.match(stat).group("unit")]
        elif "share of" in rest and "gain" in rest:
            m = SHARE_OF.search(rest)
            sides = (m.group("a").strip(), m.group("b").strip()) if m else self.share_sides(row)
            if sides is None:
                return None
            spec.update(kind="no gain" if stat.lower().startswith("no gain") else "share", a=sides[0], b=sides[1])
            spec["task"] = task_of(prefix) or "heldout_nll"
        else:
            return None
        (spec["variant_a"], a), (spec["variant_b"], b) = split_variant(spec["a"]), split_variant(spec["b"])
        a, b = a or b, b or a  # "all-linear QLoRA NF4 + DQ's gain - attention-only's gain": one row, two variants
        spec.update(a=a, b=b, base_a="", base_b="")  # both empty ("rank 8" vs "rank 64"): finetune_data finds the row
        if a:
            set_sides(spec, a, b)
        return spec

    def variant_row(self, task: str, model: str, variant: str | None) -> str:
        """"qlora nf4_dq": the one tuned row (method and quant) whose items carry `variant`."""
        rows = {(f.method, f.quant) for f in self.files
                if f.task == task and model_key(f.model) == model_key(model) and f.variant == variant and variant}  # fmt: skip
        if len(rows) != 1:
            raise LookupError(f"variant {variant!r} of {model}: {len(rows)} tuned rows with its {task} items, expected one")
        return " ".join(next(iter(rows)))

    def share_sides(self, row: Row) -> tuple[str, str] | None:
        """The sides of a share row that names none ("share of the gain"): those of the row of the same claim
        and model that does ("share of LoRA BF16's gain that QLoRA NF4 + DQ recovers")."""
        for other in self.findings.rows:
            if (other.claim, other.model) == (row.claim, row.model):
                m = SHARE_OF.search(other.comparison)
                if m:
                    return m.group("a").strip(), m.group("b").strip()
        return None

    def _by_seed(self, task: str, model: str, display: str, variant: str | None = None) -> dict[int | None, dict[str, dict]]:
        method, quant = split_side(display)
        out: dict[int | None, dict[str, dict]] = {}
        for key, item in self.load_side(task, model, method, quant, stage="eval", variant=variant).items():
            m = re.match(r"s(\d+):(.*)$", key, re.S)
            seed, item_id = (int(m.group(1)), m.group(2)) if m else (None, key)
            out.setdefault(seed, {})[item_id] = item
        return out

    def finetune_data(self, row: Row, spec: dict) -> dict:
        """The paired per-item values: {"sides": {name: (num[S, n], den[S, n])}, "ids", "seeds", "clusters"}.
        A side's value over a set of (seed, item) pairs is sum(num) / sum(den): per token for held-out NLL,
        a mean for MMLU credit (pp) and RougeL (points). Untuned bases (one file, no seed) are repeated for
        every seed: tuned rows are paired with their base seed by seed and pooled over seeds."""
        task = spec["task"]
        if spec["a"] == "":  # "rank 8" vs "rank 64": the tuned row whose files carry the variant
            a = self.variant_row(task, row.model, spec["variant_a"] or spec["variant_b"])
            set_sides(spec, a, a)
        names = [n for n in ("a", "base_a", "b", "base_b") if spec[n] is not None]
        loaded = {n: self._by_seed(task, row.model, spec[n], spec.get(f"variant_{n}")) for n in names}
        tuned_seeds = [set(loaded[n]) for n in ("a", "b") if spec[n] is not None]
        if any(s != tuned_seeds[0] for s in tuned_seeds):
            raise LookupError(f"the tuned rows have different seeds: {[sorted(s, key=str) for s in tuned_seeds]}")
        seeds = sorted(tuned_seeds[0], key=lambda s: -1 if s is None else s)
        for n in names:
            if set(loaded[n]) != {None} and set(loaded[n]) != set(seeds):
                raise LookupError(f"{spec[n]}: seeds {sorted(loaded[n], key=str)} do not pair with {seeds}")
        per_seed = {n: [loaded[n][None if set(loaded[n]) == {None} else s] for s in seeds] for n in names}
        ids = None
        for n in names:
            for items in per_seed[n]:
                ids = [i for i in (ids if ids is not None else items) if i in items]
        if not ids:
            raise LookupError("no item ids in common")
        sides = {}
        for n in names:
            num = np.empty((len(seeds), len(ids)))
            den = np.empty((len(seeds), len(ids)))
            for s, items in enumerate(per_seed[n]):
                for k, i in enumerate(ids):
                    num[s, k], den[s, k] = item_value(task, items[i], spec)
            sides[n] = (num, den)
        clusters = [i if task.startswith("mmlu") else i.rpartition("/")[0] or i for i in ids]
        return {"sides": sides, "ids": ids, "seeds": seeds, "clusters": clusters}

    def recompute_finetune(self, row: Row, spec: dict) -> Result:
        decision, counted = parse_printed_verdict(row.verdict)
        res = Result(row, "skipped", printed_decision=decision, counted=counted)
        kind, task = spec["kind"], spec["task"]
        lower_better = task == "heldout_nll"
        if row.statistic.startswith("not measured"):
            res.reason = f"the report did not measure it ({row.statistic})"
            return res
        try:
            data = self.finetune_data(row, spec)
        except (LookupError, ValueError, KeyError) as e:
            res.status, res.reason = "MISSING", f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
            return res
        sides, seeds = data["sides"], data["seeds"]
        cluster_names = sorted(set(data["clusters"]))
        weights = cluster_bootstrap_weights(data["clusters"], self.rng)

        def value(name, w=None, s=None):
            num, den = sides[name]
            num, den = (num.sum(0), den.sum(0)) if s is None else (num[s], den[s])
            return num.sum() / den.sum() if w is None else (w @ num) / (w @ den)

        def change(t, w=None, s=None):  # tuned row minus its untuned base
            return value(t, w, s) - value("base_" + t, w, s)

        def improvement(t, w=None, s=None):  # the gain, positive when the tuned row is better
            return -change(t, w, s) if lower_better else change(t, w, s)

        if kind == "gain":
            stat_fn = lambda w=None, s=None: change("a", w, s)  # noqa: E731
        elif kind == "did":
            stat_fn = lambda w=None, s=None: change("a", w, s) - change("b", w, s)  # noqa: E731
        elif kind == "share":
            stat_fn = lambda w=None, s=None: 100 * change("a", w, s) / change("b", w, s)  # noqa: E731
        else:  # "no gain": the reference row's own gain
            stat_fn = lambda w=None, s=None: improvement("b", w, s)  # noqa: E731

        # the rule
        title = row.claim_title.lower()
        try:
            if kind == "gain":
                res.rule = Rule("beats", 0.0, lower_is_better=lower_better)
            elif kind == "did":
                if " match" in title and "beat" not in title and "trail" not in title:
                    margin = {"mmlu": self.acc_margin, "mmlu_0shot": self.acc_margin, "rougeL": self.rouge_margin}.get(task)
                    if margin is None:
                        raise LookupError(f"a 'matches' claim without a margin for {task} in the report's header")
                    res.rule = Rule("matches", 0.0, lower_better, margin)
                else:  # "A trails / beats B": the first side's gain is the better one
                    res.rule = Rule("beats", 0.0, lower_is_better=lower_better)
            else:
                m = re.search(r"\(\s*(?:>=|≥)\s*([\d.]+)\s*%\s*\)", row.comparison)
                threshold = float(m.group(1)) if m else self.share_threshold
                if threshold is None:
                    raise LookupError("a share row without a threshold ('(>= 90%)' or the header's 'recovers at least')")
                share_rule = Rule("at least", threshold, lower_is_better=False)
                res.rule = share_rule if kind == "share" else Rule("beats", 0.0, lower_is_better=False)
        except LookupError as e:
            res.status, res.reason = "MISSING", str(e)
            return res

        # the statistic, pooled over seeds, its cluster bootstrap and the per-seed values
        with np.errstate(divide="ignore", invalid="ignore"):
            res.recomputed = float(stat_fn())
            draws = np.asarray(stat_fn(weights), float)
            per_seed = [float(stat_fn(None, s)) for s in range(len(seeds))]
        draws = draws[np.isfinite(draws)]
        res.n = len(seeds) * len(data["ids"])
        res.interval = percentile_interval(draws)
        seed_mean, t_lo, t_hi = t_interval(per_seed)
        notes = [f"pooled over {len(seeds)} seed(s) x {len(data['ids'])} items"
                 + (" per token" + (" (template tokens left out)" if spec["tokens"] == "content" else " (with the template's tokens)")
                    if task == "heldout_nll" else ""),
                 f"bootstrap over {len(cluster_names)} " + ("questions" if task.startswith("mmlu") else "tasks") + " (whole)",
                 f"per-seed {', '.join(f'{v:.4g}' for v in per_seed)}; mean {seed_mean:.4g}, t interval [{t_lo:.4g}, {t_hi:.4g}]"]

        # the printed numbers
        stat = row.statistic.replace("−", "-")
        if kind in ("gain", "did"):
            printed = UNIT_STAT.match(stat).group("value")
        elif kind == "share":
            m = re.search(r"recovers\s+(" + NUMBER + r")\s*%", stat)
            printed = m.group(1) if m else None
        else:
            m = re.search(r"gain over its untuned base is\s+(" + NUMBER + r")\s*(\[[^\]]*\])?", stat)
            printed = m.group(1) if m else None
            res.printed_interval = parse_interval_loose(m.group(2)) if m and m.group(2) else None
        if printed is None:
            res.status, res.reason = "MISMATCH", f"no number in the printed statistic {row.statistic!r}"
            return res
        if kind != "no gain":
            res.printed_interval = parse_interval_loose(row.interval)
        res.printed_value = float(printed)
        res.tolerance = half_unit(printed.lstrip("+-"))
        res.digits = max(len(printed.partition(".")[2]), 1)
        problems = []
        if abs(res.recomputed - res.printed_value) > res.tolerance + 1e-12:
            problems.append(f"statistic {res.recomputed:.6g} vs printed {printed} (tolerance ±{res.tolerance:g})")
        n_text = row.n if re.match(r"\d", row.n) else (re.search(r"\((\d[\d,]*) items\)", stat) or [None, ""])[1]
        n_match = re.match(r"(\d[\d,]*)\b(?:\D*?\bin\s+(\d[\d,]*)\s+tasks)?", n_text or "")
        if n_match:
            if int(n_match.group(1).replace(",", "")) != res.n:
                problems.append(f"{res.n} paired items over seeds, printed n {n_text}")
            if n_match.group(2) and int(n_match.group(2).replace(",", "")) != len(cluster_names):
                problems.append(f"{len(cluster_names)} tasks, printed {n_match.group(2)}")
        printed_t = None
        if spec["per_seed"] is not None:
            ps = spec["per_seed"]
            if int(ps.group("seeds")) != len(seeds):
                problems.append(f"{len(seeds)} seeds, printed {ps.group('seeds')}")
            mv = re.search(NUMBER, ps.group("value").replace("−", "-"))
            if mv and abs(seed_mean - float(mv.group(0))) > half_unit(mv.group(0).lstrip("+-")) + 1e-12:
                problems.append(f"per-seed mean {seed_mean:.6g} vs printed {mv.group(0)}")
            printed_t = parse_interval_loose(ps.group("interval"))
            if printed_t:
                ends = re.findall(NUMBER, ps.group("interval").replace("−", "-"))
                for got, text in zip((t_lo, t_hi), ends):
                    if abs(got - float(text)) > half_unit(text.lstrip("+-")) + 1e-12:
                        problems.append(f"t interval [{t_lo:.6g}, {t_hi:.6g}] vs printed {ps.group('interval')}")
                        break

        # the decision: the bootstrap interval's, and for rows pooled over seeds the per-seed t interval's too
        # (the report's rule, applied whether or not the row prints that interval)
        boot = res.rule.decide(*res.interval)
        res.decision = boot
        if len(seeds) > 1 and (spec["per_seed"] is not None or kind != "no gain"):
            by_t = res.rule.decide(t_lo, t_hi)
            if by_t != boot:
                res.decision = INCONCLUSIVE
                notes.append(f"bootstrap says {boot}, t interval {by_t}: inconclusive")
            if spec["per_seed"] is None:
                notes.append("the report prints no per-seed t interval for this row")
        if kind == "share" or kind == "no gain":
            gain_draws = np.asarray(improvement("b", weights), float)
            gain_iv = percentile_interval(gain_draws)
            if kind == "share":
                notes.insert(0, f"{spec['b']}'s own gain {improvement('b'):+.4f} [{gain_iv[0]:+.4f}, {gain_iv[1]:+.4f}]")
                if gain_iv[0] <= 0:
                    res.decision = INCONCLUSIVE
                    notes.append("no gain to share (the reference gain's interval reaches 0)")
            else:
                res.interval = gain_iv
                if res.decision == HOLDS:  # a gain to share after all: decide the share
                    with np.errstate(divide="ignore", invalid="ignore"):
                        share = 100 * change("a", weights) / change("b", weights)
                    share_iv = percentile_interval(share[np.isfinite(share)])
                    res.decision = share_rule.decide(*share_iv)
                    notes.append(f"the reference gain's interval is above 0: share {100 * change('a') / change('b'):.1f}% "
                                 f"[{share_iv[0]:.1f}, {share_iv[1]:.1f}] decides ({share_rule.describe()})")
                else:
                    res.decision = INCONCLUSIVE
                    notes.append(f"no gain to share: the gain's interval reaches 0, so {share_rule.describe()} is not decided")
        if res.decision != INCONCLUSIVE and kind != "no gain":
            res.p_value = res.rule.p_value(draws, res.decision)
        return self.settle(res, problems, decision, [res.printed_interval, printed_t], "; ".join(notes))

    def settle(self, res: Result, problems: list[str], decision: str | None, printed: list, note: str = "") -> Result:
        """The row's status: MISMATCH (a statistic or n differs), FLIP or borderline (the recomputed decision
        differs from the printed one; borderline when a printed interval lies near a decision boundary), else
        reproduced."""
        tail = f"; {note}" if note else ""
        if problems:
            res.status, res.reason = "MISMATCH", "; ".join(problems) + tail
        elif decision is not None and res.decision != decision:
            if any(self.borderline(res.rule, iv) for iv in printed if iv):
                res.status = "borderline"
                res.reason = f"recomputed {res.decision}, printed {decision}; a printed interval is near a boundary{tail}"
            else:
                res.status, res.reason = "FLIP", f"recomputed intervals say {res.decision}, printed {decision}{tail}"
        else:
            res.status, res.reason = "reproduced", note
        return res

    @staticmethod
    def borderline(rule: Rule, interval: tuple[float, float]) -> bool:
        lo, hi = interval
        slack = BORDERLINE_SHARE * max(hi - lo, 0.0)
        return any(abs(end - edge) <= slack for end in (lo, hi) for edge in rule.boundaries())


# --- claims, Holm note, output -------------------------------------------------------------------------


def holm_notes(results: list[Result], alpha: float = 0.025) -> None:
    """Marks counted decided rows whose one-sided bootstrap p-value would not survive Holm within their
    claim and model (alpha one-sided, matching a two-sided 95% interval)."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        if r.p_value is not None and r.counted and r.status in ("reproduced", "borderline"):
            groups.setdefault((r.row.claim, r.row.model), []).append(r)
    for members in groups.values():
        members.sort(key=lambda r: r.p_value)
        m = len(members)
        stopped = False
        for k, r in enumerate(members):
            limit = alpha / (m - k)
            stopped = stopped or r.p_value > limit
            r.holm_note = f"p={r.p_value:.4f}, Holm {'fails' if stopped else 'kept'} (≤{limit:.4f})"


def claim_verdicts(findings: Findings, results: list[Result]) -> list[tuple[str, str, str, str, str]]:
    """(claim, model, printed verdict, recomputed verdict, agreement) for each claim and model whose counted
    rows were all recomputed."""
    by_group: dict[tuple[str, str], list[Result]] = {}
    printed: dict[tuple[str, str], str] = {}
    for r in results:
        key = (r.row.claim, r.row.model)
        printed[key] = r.row.model_verdict
        if r.counted:
            by_group.setdefault(key, []).append(r)
    out = []
    for key, members in by_group.items():
        if any(r.decision is None for r in members):
            continue
        decisions = [r.decision for r in members]
        verdict = FAILS if FAILS in decisions else HOLDS if all(d == HOLDS for d in decisions) else INCONCLUSIVE
        summary = findings.summary.get(key)
        agree = verdict == printed[key] and (summary is None or summary == printed[key])
        out.append((key[0], key[1], printed[key] + ("" if summary in (None, printed[key]) else f" (summary: {summary})"),
                    verdict, "yes" if agree else "NO"))  # fmt: skip
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fmt_interval(iv: tuple[float, float] | None, digits: int = 4) -> str:
    return "–" if iv is None else f"[{iv[0]:.{digits}f}, {iv[1]:.{digits}f}]"


def _same(r: Result) -> str:
    if r.decision is None or r.printed_decision is None:
        return "–"
    what = {"beats": "side of no difference", "at least": "side of the threshold"}.get(r.rule.kind, "inside/outside the margin")
    return f"{'yes' if r.decision == r.printed_decision else 'no'} ({what})"


def render(findings_path: str, items_root: str, seed: int, results: list[Result], claims, failed_runs=()) -> str:
    done = [r for r in results if r.status != "skipped"]
    lines = [
        f"# Recomputation of {findings_path} from {items_root}",
        "",
        f"Independent of the `qlora` package (scripts/recompute_findings.py): perplexity = exp(Σ nll_sum / Σ tokens) over "
        f"the paired windows, ratio = row / reference; accuracy difference = 100 × mean paired difference of tie-aware "
        f"credit (1/k on a k-way tie). Interval: paired percentile bootstrap over items, {RESAMPLES:,} resamples, "
        f"numpy default_rng(seed={seed}) (the report's are BCa / Newcombe, so endpoints differ slightly). Fine-tuning rows: "
        f"a tuned row's change over its untuned base (held-out NLL per token, template tokens left out unless the row says "
        f"otherwise; MMLU choice-rule credit in pp; RougeL points = 100 × F), paired seed by seed and pooled over seeds; "
        f"differences in differences, shares of a gain; a cluster bootstrap over whole held-out tasks (MMLU: questions, "
        f"all seeds of one together) and the per-seed mean's t interval.",
        "",
        "| claim | model | comparison | printed statistic | recomputed | \\|difference\\| | printed interval | recomputed interval "
        "| printed verdict | rule | same decision | status | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in done:
        digits = r.digits if r.digits is not None else 4 if r.row.statistic.startswith("perplexity") else 2
        diff = None if r.recomputed is None or r.printed_value is None else abs(r.recomputed - r.printed_value)
        note = "; ".join(x for x in (r.reason, r.holm_note) if x)
        lines.append(
            f"| {r.row.claim} | {r.row.model} | {r.row.comparison} | {r.row.statistic} | {_fmt(r.recomputed, 6)} "
            f"| {'–' if diff is None else f'{diff:.2e}'} | {r.row.interval} | {_fmt_interval(r.interval, digits)} "
            f"| {_plain_verdict(r.row.verdict)} | {r.rule.describe() if r.rule else '–'} | {_same(r)} | {r.status} | {note} |"
        )
    if claims:
        lines += ["", "| claim | model | printed verdict | recomputed verdict | same |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {m} | {p} | {v} | {s} |" for c, m, p, v, s in claims]
    skipped = [r for r in results if r.status == "skipped"]
    counts = {s: sum(r.status == s for r in done) for s in ("reproduced", "borderline", "MISMATCH", "FLIP", "MISSING")}
    lines += ["", f"Rows recomputed: {len(done)}; " + ", ".join(f"{k}: {v}" for k, v in counts.items())
              + f"; skipped (not recomputable here): {len(skipped)}."]  # fmt: skip
    for r in skipped:
        lines.append(f"- skipped {r.row.claim} {r.row.model}: {r.row.comparison} — {r.reason}")
    if failed_runs:
        lines += ["", "Classification runs left out as failed (accuracy not above the majority class of their test items):"]
        lines += [f"- {run}" for run in failed_runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", required=True, help="the findings markdown, e.g. reports/findings.md")
    parser.add_argument("--items", required=True, help="the per-item files' root, e.g. findings/items")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--seed", type=int, default=2022, help="the bootstrap's seed (default 2022)")
    args = parser.parse_args(argv)
    try:
        findings = parse_findings(Path(args.findings).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not Path(args.items).is_dir():
        print(f"error: {args.items} is not a folder", file=sys.stderr)
        return 2
    recomputer = Recomputer(findings, Path(args.items), args.seed)
    results = [recomputer.recompute(row) for row in findings.rows]
    holm_notes(results)
    claims = claim_verdicts(findings, results)
    text = render(args.findings, args.items, args.seed, results, claims, list(recomputer.failed_runs))
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    done = [r for r in results if r.status != "skipped"]
    if not done:
        print("error: no row could be recomputed", file=sys.stderr)
        return 2
    failed = [r for r in done if r.failed]
    for r in failed:
        print(f"FAILED {r.row.claim} {r.row.model}: {r.row.comparison}: {r.status}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
