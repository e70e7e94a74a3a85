"""Paired comparisons of two evaluations on the same items (issue 12 §1).

Differences between data types or training methods are systematic effects measured on the same
windows, questions and prompts, so they are compared item by item: the per-item differences vary
far less than the scores themselves, and a paired test detects with tens of items what unpaired
intervals need thousands for.

- Perplexity: the ratio row / reference = exp(mean per-token NLL difference), token-weighted; its 95%
  interval from a paired bootstrap over windows (BCa, `scipy.stats.bootstrap`: each resample of
  windows recomputes the ratio of token-weighted NLLs).
- Held-out NLL: the difference of token-weighted mean NLL per token (nats), bootstrapped the same way.
- RougeL: the mean paired difference, bootstrapped.
- Accuracy (MMLU, classification): the paired difference of accuracies, the exact McNemar test
  (`scipy.stats.binomtest` on the discordant pairs) and Newcombe's hybrid score interval for a paired
  difference (Newcombe 1998, Stat Med 17:2635, method 10).

Every comparison also gives the smallest effect the sample could have detected: (z_{1-a/2} + z_{0.8})
times the standard error of the estimate (two-sided 5%, 80% power), from the paired spread. The
bootstrap is seeded, so a report is reproducible to the byte.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import statistics
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from qlora.eval.items import ItemResults, LabelItem, MMLUItem, RougeItem, TokenNLL
from qlora.eval.result import Metric, Task
from qlora.eval.stats import wilson_interval

POWER = 0.8
N_RESAMPLES = 2000


class Effect(enum.Enum):
    """What the estimate is."""

    RATIO = "ratio"  # row / reference (perplexity); no difference = 1
    DIFFERENCE = "difference"  # row - reference; no difference = 0
    SHARE = "share"  # the row's gain / the reference's gain (fine-tuning, `qlora.report.gains`); the same gain = 1


class Direction(enum.Enum):
    """The row against its reference, by the interval."""

    BETTER = "better"
    WORSE = "worse"
    NO_DIFFERENCE = "no difference"  # the interval covers "no difference"


class Verdict(enum.Enum):
    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    INCONCLUSIVE = "inconclusive"


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """A row compared with its reference on the same items.

    Attributes:
        task, metric: what was compared.
        effect: RATIO (perplexity) or DIFFERENCE (accuracy, RougeL F and NLL on their own scales).
        estimate / ci_low / ci_high: the effect and its interval at `confidence`.
        n: paired items.
        mde: the smallest effect this sample could have detected (80% power, two-sided); for RATIO a
            ratio >= 1 (ratios beyond [1/mde, mde] were detectable), else a difference >= 0.
        p_value: the exact McNemar p-value (accuracy), else None.
        discordant: (row right & reference wrong, row wrong & reference right), accuracy only.
        confidence: the interval's level.
        method: how the interval was computed, for the report.
    """

    task: Task
    metric: Metric
    effect: Effect
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    mde: float
    p_value: float | None
    discordant: tuple[int, int] | None
    confidence: float
    method: str

    @property
    def null(self) -> float:
        return 0.0 if self.effect is Effect.DIFFERENCE else 1.0

    @property
    def covers_null(self) -> bool:
        return self.ci_low <= self.null <= self.ci_high

    @property
    def significant(self) -> bool:
        """The interval excludes "no difference" and, where a test's p-value comes with it (McNemar), that test
        agrees at the interval's level: a table's mark and a verdict never rest on different tests."""
        return not self.covers_null and (self.p_value is None or self.p_value < 1 - self.confidence)

    @property
    def direction(self) -> Direction:
        if not self.significant:
            return Direction.NO_DIFFERENCE
        above = self.ci_low > self.null
        higher_is_better = self.metric.higher_is_better or self.effect is Effect.SHARE  # a larger share of the gain
        return Direction.BETTER if above == higher_is_better else Direction.WORSE

    @property
    def se(self) -> float:
        """The standard error implied by the interval (its half-width over z; on the log scale for a ratio)."""
        z = _z(self.confidence)
        if self.effect is Effect.RATIO and self.ci_low > 0:
            return (math.log(self.ci_high) - math.log(self.ci_low)) / (2 * z)
        return (self.ci_high - self.ci_low) / (2 * z)

    @property
    def clusters(self) -> int | None:
        """How many clusters were resampled whole (held-out tasks, or MMLU questions pooled over seeds), else None:
        items were."""
        import re

        m = re.search(r"cluster bootstrap over (\d+) (?:tasks|questions|examples)", self.method)
        return int(m.group(1)) if m else None

    @property
    def cluster_unit(self) -> str | None:
        """What the clusters are: "tasks", or "questions" / "examples" pooled over seeds (None without clusters)."""
        import re

        m = re.search(r"cluster bootstrap over \d+ (tasks|questions|examples)", self.method)
        return m.group(1) if m else None

    def margin_bounds(self, margin: float) -> tuple[float, float]:
        """The equivalence region: null ± margin (RATIO: 1 ± a relative margin)."""
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin!r}")
        return self.null - margin, self.null + margin


def superiority(c: PairedComparison) -> Verdict:
    """"The row is better than its reference": holds when the interval lies on the better side of no
    difference, does not hold when it lies on the worse side, else inconclusive."""
    return {Direction.BETTER: Verdict.HOLDS, Direction.WORSE: Verdict.DOES_NOT_HOLD}.get(c.direction, Verdict.INCONCLUSIVE)


def equivalence(c: PairedComparison, margin: float) -> Verdict:
    """"The row matches its reference within ±margin": holds when the whole interval lies inside the
    margin (a TOST at half the interval's error rate), does not hold when it lies wholly outside,
    else inconclusive."""
    low, high = c.margin_bounds(margin)
    if low <= c.ci_low and c.ci_high <= high:
        return Verdict.HOLDS
    if c.ci_low > high or c.ci_high < low:
        return Verdict.DOES_NOT_HOLD
    return Verdict.INCONCLUSIVE


def at_least(c: PairedComparison, bound: float) -> Verdict:
    """"The effect is at least `bound`" (e.g. a share of the gain >= 0.9): holds when the whole interval lies
    at or above it, does not hold when it lies wholly below, else inconclusive."""
    if c.ci_low >= bound:
        return Verdict.HOLDS
    if c.ci_high < bound:
        return Verdict.DOES_NOT_HOLD
    return Verdict.INCONCLUSIVE


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of independent replicates (e.g. one effect per training seed) with
    Student's t interval at `confidence`.

    Raises:
        ValueError: fewer than 2 values, or a confidence outside (0, 1).
    """
    if len(values) < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {len(values)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(1 - (1 - confidence) / 2))


def _detectable(se: float, confidence: float) -> float:
    return (_z(confidence) + float(stats.norm.ppf(POWER))) * se


_SEED_ID = re.compile(r"^s(\d+):(.+)$")


def broadcast_seeds(row: ItemResults, ref: ItemResults) -> tuple[ItemResults, ItemResults]:
    """`row` and `ref` with ids that can pair when one side is pooled over training seeds and the other is not.

    A row trained once per seed has ids "s<seed>:<id>" (`records.pool_seeds`); a row trained once (an untuned
    base) has plain ids. The unpooled side is repeated once per seed with the same prefixes, so each seed is
    compared with the same items of the unpooled row. Anything else is returned unchanged.
    """

    def seeds(items: ItemResults) -> list[str] | None:
        matches = [_SEED_ID.match(i) for i in items.ids]
        if not matches or not all(matches):
            return None
        return sorted({m.group(1) for m in matches}, key=int)

    def plain(items: ItemResults) -> bool:
        return not any(_SEED_ID.match(i) for i in items.ids)

    row_seeds, ref_seeds = seeds(row), seeds(ref)
    if row_seeds and ref_seeds is None and plain(ref):
        return row, ItemResults.concat([ref.with_prefix(f"s{k}:") for k in row_seeds])
    if ref_seeds and row_seeds is None and plain(row):
        return ItemResults.concat([row.with_prefix(f"s{k}:") for k in ref_seeds]), ref
    return row, ref


def pair_items(row: ItemResults, ref: ItemResults, *, strict: bool = True) -> tuple[list, list]:
    """The items of `row` and `ref` with the same ids, aligned in the reference's order (a side pooled over
    training seeds pairs with a side that is not as `broadcast_seeds` says).

    Args:
        strict: the two must hold exactly the same ids; otherwise the shared ones are used.

    Raises:
        ValueError: different tasks, no shared ids, ids that differ (strict; the counts are named),
            or a shared id whose items disagree on what was measured (token count, gold answer).
    """
    if row.task is not ref.task:
        raise ValueError(f"cannot pair {row.task.value} items with {ref.task.value} items")
    row, ref = broadcast_seeds(row, ref)
    row_by_id = row.by_id()
    shared = [i for i in ref.ids if i in row_by_id]
    if not shared or (strict and not len(shared) == len(row) == len(ref)):
        only_row = sorted(set(row_by_id) - set(ref.ids))[:2]
        only_ref = sorted(set(ref.ids) - set(row_by_id))[:2]
        raise ValueError(f"item ids do not match: row has {len(row)}, reference {len(ref)}, shared {len(shared)} "
                         f"(e.g. only in row {only_row}, only in reference {only_ref})")  # fmt: skip
    a, b = [row_by_id[i] for i in shared], [ref.by_id()[i] for i in shared]
    for x, y in zip(a, b):
        same = {TokenNLL: lambda: x.tokens == y.tokens, MMLUItem: lambda: x.answer == y.answer,
                LabelItem: lambda: x.label == y.label, RougeItem: lambda: True}[type(x)]  # fmt: skip
        if not same():
            raise ValueError(f"item {x.id!r} measured different things in row and reference: {x} vs {y}")
    return a, b


def _bootstrap_ci(data: tuple[np.ndarray, ...], statistic: Callable, confidence: float, n_resamples: int,
                  seed: int) -> tuple[float, float, str]:  # fmt: skip
    """BCa interval of `statistic` over items resampled jointly; percentile where BCa is undefined."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate BCa gives NaN (handled) with a warning
            res = stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=True, vectorized=True,
                                  confidence_level=confidence, method=method, rng=np.random.default_rng(seed))  # fmt: skip
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, f"paired bootstrap ({method}, {n_resamples:,} resamples, seed {seed})"
    raise ValueError("the bootstrap interval is undefined for these items")


MIN_CLUSTERS = 3  # fewer groups than this: the items are resampled one by one (and the method says so)


def _clustered(d: np.ndarray, t: np.ndarray, clusters: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(d, t) summed per cluster when every item names one and there are at least MIN_CLUSTERS, else as given."""
    if clusters is None or any(c is None for c in clusters) or len(set(clusters)) < MIN_CLUSTERS:
        return d, t, None
    names = sorted(set(clusters))
    index = {c: i for i, c in enumerate(names)}
    dc, tc = np.zeros(len(names)), np.zeros(len(names))
    np.add.at(dc, [index[c] for c in clusters], d)
    np.add.at(tc, [index[c] for c in clusters], t)
    return dc, tc, len(names)


def _weighted(d: np.ndarray, t: np.ndarray, confidence: float, n_resamples: int, seed: int,
              clusters: Sequence[str | None] | None = None, unit: str = "tasks") -> tuple[float, float, float, float, str]:  # fmt: skip
    """Token-weighted mean of per-item sums d over token counts t: (estimate, low, high, se, method).

    With `clusters` (the group each item was sampled with, e.g. its held-out task), whole clusters are
    resampled: items of one task are not independent draws, and the interval must say how much the
    result depends on which tasks were held out. `unit` names the clusters in the method ("tasks", "questions")."""
    d, t, k = _clustered(d, t, clusters)
    n = len(d)
    estimate = float(d.sum() / t.sum())
    rates = d / t
    if np.ptp(rates) == 0:  # every item has the same per-token difference (e.g. an identical pair)
        return estimate, estimate, estimate, 0.0, "exact (no variation between items)"
    se = math.sqrt(n / (n - 1) * float(((d - estimate * t) ** 2).sum())) / float(t.sum())

    def statistic(d, t, axis=-1):
        return d.sum(axis=axis) / t.sum(axis=axis)

    low, high, method = _bootstrap_ci((d, t), statistic, confidence, n_resamples, seed)
    if k is not None:
        method = method.replace("paired bootstrap", f"paired cluster bootstrap over {k} {unit}")
    return estimate, low, high, se, method


def _mean(d: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[float, float, float, float, str]:
    estimate = float(d.mean())
    if np.ptp(d) == 0:
        return estimate, estimate, estimate, 0.0, "exact (no variation between items)"
    se = float(d.std(ddof=1)) / math.sqrt(len(d))

    def statistic(d, axis=-1):
        return d.mean(axis=axis)

    low, high, method = _bootstrap_ci((d,), statistic, confidence, n_resamples, seed)
    return estimate, low, high, se, method


@dataclasses.dataclass(frozen=True)
class GainShare:
    """The share of a fine-tuning gain a variant keeps: (untuned - variant) / (untuned - tuned), per-token NLL.

    1 keeps the whole gain, 0 none of it, below 0 is worse than not fine-tuning at all. The interval is a
    paired bootstrap over items (all three evaluated on the same items, resampled jointly).
    """

    estimate: float
    ci_low: float
    ci_high: float
    n: int
    gain: float  # untuned - tuned, nats per token
    confidence: float
    method: str


def gain_share(row: ItemResults, tuned: ItemResults, untuned: ItemResults, *, confidence: float = 0.95,
               n_resamples: int = N_RESAMPLES, seed: int = 0) -> GainShare:  # fmt: skip
    """How much of the gain of `tuned` over `untuned` the variant `row` keeps (held-out NLL or perplexity items).

    Raises:
        ValueError: not NLL/perplexity items, items that cannot be paired, fewer than 2, or no gain (tuned is
            not better than untuned on these items: a share of it means nothing).
    """
    if row.task not in (Task.HELDOUT_NLL, Task.PERPLEXITY):
        raise ValueError(f"gain_share compares per-token NLL items, not {row.task.value}")
    r, a = pair_items(row, tuned)
    u, _ = pair_items(untuned, tuned)
    if len(a) < 2:
        raise ValueError(f"gain_share needs at least 2 shared items, got {len(a)}")
    t = np.array([x.tokens for x in a], dtype=float)
    v_sum, a_sum, u_sum = (np.array([x.nll_sum for x in items]) for items in (r, a, u))
    gain = float((u_sum.sum() - a_sum.sum()) / t.sum())
    if not gain > 0:
        raise ValueError(f"tuned is not better than untuned on these items (gain {gain:+.4f} nats/token): no gain to share")

    def statistic(v, a, u, t, axis=-1):
        return (u.sum(axis=axis) - v.sum(axis=axis)) / (u.sum(axis=axis) - a.sum(axis=axis))

    estimate = float(statistic(v_sum, a_sum, u_sum, t))
    low, high, method = _bootstrap_ci((v_sum, a_sum, u_sum, t), statistic, confidence, n_resamples, seed)
    return GainShare(estimate, low, high, len(a), gain, confidence, method)


def newcombe_paired_interval(both: int, row_only: int, ref_only: int, neither: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for a paired difference of proportions
    p_row - p_ref, from the 2x2 table of (row, reference) outcomes."""
    n = both + row_only + ref_only + neither
    if n == 0:
        raise ValueError("no pairs")
    z = _z(confidence)
    p1, p2 = (both + row_only) / n, (both + ref_only) / n
    l1, u1 = wilson_interval(both + row_only, n, z)
    l2, u2 = wilson_interval(both + ref_only, n, z)
    a = (both + row_only) * (ref_only + neither) * (both + ref_only) * (row_only + neither)
    b = both * neither - row_only * ref_only
    c = b - n / 2 if b > n / 2 else (b if b < 0 else 0.0)
    phi = c / math.sqrt(a) if a > 0 else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def mcnemar_p(row_only: int, ref_only: int) -> float:
    """Exact two-sided McNemar p-value: binomial test of the discordant pairs against 1/2."""
    if row_only + ref_only == 0:
        return 1.0
    return float(stats.binomtest(row_only, row_only + ref_only, 0.5).pvalue)


def credit(item, metric: Metric) -> float:
    """An item's credit in [0, 1] by `metric`'s rule (MMLU: 1/k for a k-way tie at the top; a label item: 0 or 1).

    Raises:
        ValueError: the item did not record the rule (choice log-likelihoods, or the letter rule).
    """
    if isinstance(item, LabelItem):
        return float(item.correct)
    if metric is Metric.CHOICE_ACCURACY:
        if item.choice_correct is None:
            raise ValueError(f"choice accuracy needs choice log-likelihoods in every MMLU item ({item.id} has none)")
        return float(item.choice_correct)
    if item.letter_correct is None:
        raise ValueError(f"letter accuracy needs the letter rule in every MMLU item ({item.id}: this evaluation recorded the choice rule only)")
    return float(item.letter_correct)


def _correct(items: list, metric: Metric) -> np.ndarray:
    """Per item, its credit in [0, 1] (`credit`)."""
    return np.array([credit(it, metric) for it in items])


def split_seed(item_id: str) -> tuple[str, str]:
    """("s<seed>" or "", the base item's id): items of rows trained per seed are pooled as "s<seed>:<id>"."""
    head, sep, rest = item_id.partition(":")
    return (head, rest) if sep and head.startswith("s") and head[1:].isdigit() else ("", item_id)


def seed_clusters(item_ids: Sequence[str]) -> list[str] | None:
    """Each item's base id where the items pool two or more training seeds (the same question or example under
    every seed: one draw, its results under the seeds correlated, so it is the unit to resample), else None."""
    split = [split_seed(i) for i in item_ids]
    return [base for _, base in split] if len({seed for seed, _ in split}) > 1 else None


def compare(row: ItemResults, ref: ItemResults, *, metric: Metric | None = None, confidence: float = 0.95,
            n_resamples: int = N_RESAMPLES, seed: int = 0, strict: bool = True) -> PairedComparison:  # fmt: skip
    """Compares `row` with its reference `ref` on their shared items.

    Args:
        metric: the accuracy rule for MMLU (ACCURACY: letters, CHOICE_ACCURACY: choice
            log-likelihood); default the task's (`Task.default_metric`).
        confidence: the intervals' level.
        n_resamples, seed: the bootstrap's.
        strict: require the same item ids in both (see `pair_items`).

    Raises:
        ValueError: items that cannot be paired (see `pair_items`), fewer than 2 pairs, a metric
            that does not fit the task.
    """
    metric = row.task.default_metric if metric is None else Metric.parse(metric)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    a, b = pair_items(row, ref, strict=strict)
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 shared items, got {n}")
    task = row.task
    common = {"task": task, "metric": metric, "n": n, "confidence": confidence}
    if task in (Task.PERPLEXITY, Task.HELDOUT_NLL):
        allowed = (Metric.PERPLEXITY,) if task is Task.PERPLEXITY else (Metric.NLL, Metric.CONTENT_NLL)
        if metric not in allowed:
            raise ValueError(f"metric {metric.value} does not fit task {task.value}")
        if metric is Metric.CONTENT_NLL:
            if any(x.content_tokens is None for x in a + b):
                raise ValueError("content_nll needs the NLL without template tokens in every held-out item")
            d = np.array([x.content_nll_sum - y.content_nll_sum for x, y in zip(a, b)])
            t = np.array([x.content_tokens for x in a], dtype=float)
            if any(x.content_tokens != y.content_tokens for x, y in zip(a, b)):
                raise ValueError("paired held-out items count different content tokens")
        else:
            d = np.array([x.nll_sum - y.nll_sum for x, y in zip(a, b)])
            t = np.array([x.tokens for x in a], dtype=float)
        clusters = [x.cluster for x in a] if task is Task.HELDOUT_NLL else None
        est, low, high, se, method = _weighted(d, t, confidence, n_resamples, seed, clusters)
        if task is Task.PERPLEXITY:  # exp of the per-token NLL difference: the perplexity ratio
            return PairedComparison(effect=Effect.RATIO, estimate=math.exp(est), ci_low=math.exp(low), ci_high=math.exp(high),
                                    mde=math.exp(_detectable(se, confidence)), p_value=None, discordant=None,
                                    method=method, **common)  # fmt: skip
        return PairedComparison(effect=Effect.DIFFERENCE, estimate=est, ci_low=low, ci_high=high, mde=_detectable(se, confidence),
                                p_value=None, discordant=None, method=method, **common)  # fmt: skip
    if task is Task.ROUGE_L:
        if metric is not Metric.ROUGE_L_F:
            raise ValueError(f"metric {metric.value} does not fit task {task.value}")
        d = np.array([x.score - y.score for x, y in zip(a, b)])
        clusters = [x.cluster for x in a]
        if _clustered(d, np.ones_like(d), clusters)[2] is not None:  # a token-free ratio: sum of differences / items
            est, low, high, se, method = _weighted(d, np.ones_like(d), confidence, n_resamples, seed, clusters)
        else:
            est, low, high, se, method = _mean(d, confidence, n_resamples, seed)
        return PairedComparison(effect=Effect.DIFFERENCE, estimate=est, ci_low=low, ci_high=high, mde=_detectable(se, confidence),
                                p_value=None, discordant=None, method=method, **common)  # fmt: skip
    if not metric.is_accuracy or (task is Task.CLASSIFICATION and metric is not Metric.ACCURACY):
        raise ValueError(f"metric {metric.value} does not fit task {task.value}")
    x, y = _correct(a, metric), _correct(b, metric)
    pooled = seed_clusters([it.id for it in a])
    if pooled is not None:  # rows trained per seed: resample whole questions (examples), not seed x item pairs
        unit = "questions" if task in (Task.MMLU, Task.MMLU_ZERO_SHOT) else "examples"
        est, low, high, se, method = _weighted(x - y, np.ones(n), confidence, n_resamples, seed, pooled, unit)
        return PairedComparison(effect=Effect.DIFFERENCE, estimate=est, ci_low=low, ci_high=high, mde=_detectable(se, confidence),
                                p_value=None, discordant=None, method=f"{method} (per-item credit, ties counted 1/k)",
                                **common)  # fmt: skip
    if not np.isin(np.concatenate([x, y]), (0.0, 1.0)).all():  # fractional credit (ties): a paired mean difference
        est, low, high, se, method = _mean(x - y, confidence, n_resamples, seed)
        return PairedComparison(effect=Effect.DIFFERENCE, estimate=est, ci_low=low, ci_high=high, mde=_detectable(se, confidence),
                                p_value=None, discordant=None, method=f"{method} (per-item credit with ties counted 1/k)",
                                **common)  # fmt: skip
    x, y = x.astype(bool), y.astype(bool)
    both, row_only, ref_only = int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum())
    low, high = newcombe_paired_interval(both, row_only, ref_only, n - both - row_only - ref_only, confidence)
    # The paired SD of the per-item differences, with at least one discordant pair assumed: with none
    # observed the spread is unknown, not zero.
    discordant = max(row_only + ref_only, 1) / n
    diff = (row_only - ref_only) / n
    se = math.sqrt(max(discordant - diff**2, 0.0) * n / (n - 1) / n)
    return PairedComparison(effect=Effect.DIFFERENCE, estimate=diff, ci_low=low, ci_high=high, mde=_detectable(se, confidence),
                            p_value=mcnemar_p(row_only, ref_only), discordant=(row_only, ref_only),
                            method="exact McNemar test, Newcombe hybrid score interval", **common)  # fmt: skip
