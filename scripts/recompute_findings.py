#!/usr/bin/env python
"""Independent recomputation of a findings report's paired comparisons from the committed per-item files.

Issue 22 asks that the verdicts of the findings report be reproduced by "an independent recomputation from
the committed per-item files". This script is that recomputation. It deliberately imports nothing from the
`qlora` package (standard library and numpy only) and re-derives every statistic from the report's own
explanation and the per-item file format (`qlora-items/1`):

    python scripts/recompute_findings.py --findings reports/findings_partial.md --items findings/items [--out FILE]

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

Rows it cannot recompute (differences of gains, held-out NLL, RougeL, classification, the data-type and
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


def perplexity_ratio(nll_a, tok_a, nll_b, tok_b, weights=None):
    """exp(sum nll / sum tokens) of A over that of B; with `weights` (resamples x n) one ratio per resample."""
    if weights is None:
        return math.exp(nll_a.sum() / tok_a.sum() - nll_b.sum() / tok_b.sum())
    return np.exp(weights @ nll_a / (weights @ tok_a) - weights @ nll_b / (weights @ tok_b))


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


# --- decisions -----------------------------------------------------------------------------------------

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclasses.dataclass
class Rule:
    kind: str  # "beats" or "matches"
    null: float  # no difference: 1 for a ratio, 0 for a difference
    lower_is_better: bool  # for "beats": the first side's better side
    margin: float | None = None  # for "matches": the half-width, in the statistic's units (absolute)

    def boundaries(self) -> list[float]:
        if self.kind == "beats":
            return [self.null]
        return [self.null - self.margin, self.null + self.margin]

    def decide(self, lo: float, hi: float) -> str:
        if self.kind == "beats":
            better = hi < self.null if self.lower_is_better else lo > self.null
            worse = lo > self.null if self.lower_is_better else hi < self.null
            return HOLDS if better else FAILS if worse else INCONCLUSIVE
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
        a, b = self.boundaries()
        if decision == HOLDS:
            return max(share(draws <= a), share(draws >= b))
        centre = float(np.median(draws))
        return share(draws >= a) if centre < a else share(draws <= b)

    def describe(self) -> str:
        if self.kind == "beats":
            return f"beats ({'<' if self.lower_is_better else '>'} {self.null:g})"
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
        self._cache: dict[Path, list[dict]] = {}

    # the items of one row of a table (one side of a comparison)
    def find(self, task: str, model: str, method: str, quant: str) -> list[ItemFile]:
        hits = [f for f in self.files if f.task == task and model_key(f.model) == model_key(model)
                and f.method == method and f.quant == quant and f.variant is None]  # fmt: skip
        if task in ("perplexity", "mmlu_0shot"):  # Table 2's evaluations of the untuned base models
            base = [f for f in hits if "base" in f.path.parts]
            hits = base or hits
        return hits

    def load_side(self, task: str, model: str, method: str, quant: str) -> dict[str, dict]:
        hits = self.find(task, model, method, quant)
        if not hits:
            known = sorted({f.quant for f in self.files if f.task == task and model_key(f.model) == model_key(model)})
            raise LookupError(f"no {task} items for {model} / {method} / {quant} (quants with items: {', '.join(known) or 'none'})")
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
        ppl = re.match(r"perplexity ratio\s+([\d.]+)\s*$", stat)
        acc = re.match(r"([-+−]?[\d.]+)\s*pp\b", stat)
        if " vs " not in comparison or not (ppl or acc) or "gain" in comparison or "gain" in stat:
            res.reason = "not a recomputable comparison (only perplexity ratios and accuracy differences)"
            return res
        if "per-seed mean" in comparison:
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
        if problems:
            res.status, res.reason = "MISMATCH", "; ".join(problems)
            return res
        if decision is not None and res.decision != decision:
            if res.printed_interval and self.borderline(res.rule, res.printed_interval):
                res.status = "borderline"
                res.reason = f"recomputed {res.decision}, printed {decision}; the printed interval is near a boundary"
            else:
                res.status = "FLIP"
                res.reason = f"recomputed interval says {res.decision}, printed {decision}"
            return res
        res.status = "reproduced"
        if res.printed_interval and decision is not None and res.rule.decide(*res.printed_interval) != decision:
            res.reason = f"note: the printed interval itself implies {res.rule.decide(*res.printed_interval)}"
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
    what = "side of no difference" if r.rule.kind == "beats" else "inside/outside the margin"
    return f"{'yes' if r.decision == r.printed_decision else 'no'} ({what})"


def render(findings_path: str, items_root: str, seed: int, results: list[Result], claims) -> str:
    done = [r for r in results if r.status != "skipped"]
    lines = [
        f"# Recomputation of {findings_path} from {items_root}",
        "",
        f"Independent of the `qlora` package (scripts/recompute_findings.py): perplexity = exp(Σ nll_sum / Σ tokens) over "
        f"the paired windows, ratio = row / reference; accuracy difference = 100 × mean paired difference of tie-aware "
        f"credit (1/k on a k-way tie). Interval: paired percentile bootstrap over items, {RESAMPLES:,} resamples, "
        f"numpy default_rng(seed={seed}) (the report's are BCa / Newcombe, so endpoints differ slightly).",
        "",
        "| claim | model | comparison | printed statistic | recomputed | \\|difference\\| | printed interval | recomputed interval "
        "| printed verdict | rule | same decision | status | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in done:
        digits = 4 if r.row.statistic.startswith("perplexity") else 2
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", required=True, help="the findings markdown, e.g. reports/findings_partial.md")
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
    text = render(args.findings, args.items, args.seed, results, claims)
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
