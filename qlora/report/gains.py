"""Fine-tuning gains compared as differences in differences (issue 22: a design that can decide (c), (d)).

A tuned row starts from its own untuned base (the same data type, quantized the same way), and the bases
differ before any training (NF4+DQ's held-out NLL is above BF16's). So the question "does QLoRA match
LoRA?" is asked of the gains: each row's improvement over its own untuned base on the same items.

- `gain_share`: the share of the reference's gain the row recovers, sum over items (and seeds) of the
  row's gain / the same for the reference's — claim (c) as the paper means it ("recovers >= 90% of LoRA
  BF16's gain"); held-out NLL (summed per item over its tokens) only.
- `gain_difference`: (row's tuned - base) - (reference's tuned - base), token-weighted for NLL, per item
  for accuracy and RougeL — claim (d), and (c)'s MMLU/RougeL parts.

Tuned rows trained once per seed have items "s<seed>:<id>"; each is paired with the base's item <id>.
Intervals: a paired bootstrap over items — over whole held-out tasks where the items name theirs
(`TokenNLL.cluster`) — with a t interval over seeds beside it (`over_seeds`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qlora.eval.items import ItemResults
from qlora.eval.result import Metric, Task
from qlora.report.paired import (Effect, PairedComparison, _bootstrap_ci, _clustered, _detectable, _mean, _weighted, credit,
                                 seed_clusters, split_seed, t_interval)  # fmt: skip


def _values(items: ItemResults, metric: Metric) -> dict[str, tuple[float, float]]:
    """id -> (value summed over the item, weight): NLL sums and tokens; accuracy credit or RougeL and 1."""
    out = {}
    for it in items.items:
        if metric is Metric.CONTENT_NLL:
            if it.content_tokens is None:
                raise ValueError("content_nll needs the NLL without template tokens in every held-out item")
            out[it.id] = (it.content_nll_sum, float(it.content_tokens))
        elif metric is Metric.NLL:
            out[it.id] = (it.nll_sum, float(it.tokens))
        elif metric is Metric.ROUGE_L_F:
            out[it.id] = (it.score, 1.0)
        elif metric in (Metric.CHOICE_ACCURACY, Metric.ACCURACY):
            out[it.id] = (credit(it, metric), 1.0)
        else:
            raise ValueError(f"no gain comparison for metric {metric.value}")
    return out


@dataclasses.dataclass(frozen=True)
class GainItems:
    """Per paired (seed, item): the row's and the reference's change from their bases, weights, clusters."""

    row: np.ndarray  # tuned - base (summed over the item)
    ref: np.ndarray
    weight: np.ndarray  # tokens (NLL) or 1
    clusters: list[str | None]
    seeds: list[str]
    unit: str = "tasks"  # what the clusters are: held-out "tasks", or "questions" (MMLU pooled over seeds)


def gain_items(tuned: ItemResults, base: ItemResults, ref_tuned: ItemResults, ref_base: ItemResults, metric: Metric) -> GainItems:
    """Aligns the four evaluations item by item (tuned items may carry a seed prefix).

    Raises:
        ValueError: different tasks, ids that do not match, or items of different lengths.
    """
    tasks = {e.task for e in (tuned, base, ref_tuned, ref_base)}
    if len(tasks) != 1:
        raise ValueError(f"cannot compare gains across tasks {sorted(t.value for t in tasks)}")
    t, b, rt, rb = (_values(e, metric) for e in (tuned, base, ref_tuned, ref_base))
    if set(t) != set(rt):
        raise ValueError(f"the tuned row and reference hold different items ({len(t)} vs {len(rt)})")
    if set(b) != set(rb):
        raise ValueError(f"the two untuned bases hold different items ({len(b)} vs {len(rb)})")
    row, ref, weight, clusters, seeds = [], [], [], [], []
    by_id = {it.id: it for it in tuned.items}
    # items with no task of their own (MMLU) answered under several training seeds: a question is one draw, its
    # answers under the seeds are correlated, so the question is the unit resampled (not the seed x question pair)
    by_question = all(getattr(it, "cluster", None) is None for it in tuned.items) and seed_clusters(list(t)) is not None
    for item_id in sorted(t):
        seed, base_id = split_seed(item_id)
        if base_id not in b:
            raise ValueError(f"tuned item {item_id!r} has no untuned counterpart {base_id!r}")
        weights = {t[item_id][1], b[base_id][1], rt[item_id][1], rb[base_id][1]}
        if len(weights) != 1:
            raise ValueError(f"item {item_id!r} counts different tokens in the four evaluations: {sorted(weights)}")
        row.append(t[item_id][0] - b[base_id][0])
        ref.append(rt[item_id][0] - rb[base_id][0])
        weight.append(t[item_id][1])
        clusters.append(base_id if by_question else getattr(by_id[item_id], "cluster", None))
        seeds.append(seed)
    return GainItems(np.array(row), np.array(ref), np.array(weight), clusters, seeds, "questions" if by_question else "tasks")


def gain_share(g: GainItems, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """The share of the reference's NLL gain the row recovers: sum(row gain) / sum(reference gain), a gain
    being base - tuned. Effect.SHARE, no difference = 1."""
    row_gain, ref_gain = -g.row, -g.ref
    rg, fg, k = _clustered(row_gain, ref_gain, g.clusters)
    estimate = float(rg.sum() / fg.sum())

    def statistic(a, b, axis=-1):
        return a.sum(axis=axis) / b.sum(axis=axis)

    low, high, method = _bootstrap_ci((rg, fg), statistic, confidence, n_resamples, seed)
    n = len(rg)
    se = math.sqrt(n / (n - 1) * float(((rg - estimate * fg) ** 2).sum())) / abs(float(fg.sum()))
    if k is not None:
        method = method.replace("paired bootstrap", f"paired cluster bootstrap over {k} {g.unit}")
    return PairedComparison(task=Task.HELDOUT_NLL, metric=Metric.CONTENT_NLL, effect=Effect.SHARE, estimate=estimate,
                            ci_low=low, ci_high=high, n=len(g.row), mde=_detectable(se, confidence), p_value=None,
                            discordant=None, confidence=confidence, method=method)  # fmt: skip


def reference_gain(g: GainItems, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The reference's own NLL gain over its base (base - tuned, per token; positive: fine-tuning helped) and
    its interval: (estimate, low, high). A share of a gain means something only where this is above 0."""
    est, low, high, _, _ = _weighted(-g.ref, g.weight, confidence, n_resamples, seed, g.clusters, g.unit)
    return est, low, high


def gain_difference(g: GainItems, task: Task, metric: Metric, *, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> PairedComparison:  # fmt: skip
    """(row tuned - row base) - (reference tuned - reference base): per token for NLL (negative: the row
    gained more), per item for accuracy and RougeL (positive: the row gained more)."""
    d = g.row - g.ref
    if metric.is_nll:
        est, low, high, se, method = _weighted(d, g.weight, confidence, n_resamples, seed, g.clusters, g.unit)
    elif _clustered(d, g.weight, g.clusters)[2] is not None:
        est, low, high, se, method = _weighted(d, g.weight, confidence, n_resamples, seed, g.clusters, g.unit)
    else:
        est, low, high, se, method = _mean(d, confidence, n_resamples, seed)
    return PairedComparison(task=task, metric=metric, effect=Effect.DIFFERENCE, estimate=est, ci_low=low, ci_high=high,
                            n=len(d), mde=_detectable(se, confidence), p_value=None, discordant=None, confidence=confidence,
                            method=f"difference in differences, {method}")  # fmt: skip


def over_seeds(g: GainItems, compare, confidence: float = 0.95) -> tuple[float, float, float, int] | None:
    """The same statistic per training seed and its t interval over seeds: (mean, low, high, seeds), or None
    with fewer than two seeds."""
    seeds = sorted(set(g.seeds))
    if len(seeds) < 2:
        return None
    values = []
    for s in seeds:
        keep = [i for i, x in enumerate(g.seeds) if x == s]
        sub = GainItems(g.row[keep], g.ref[keep], g.weight[keep], [g.clusters[i] for i in keep], [s] * len(keep), g.unit)
        values.append(compare(sub).estimate)
    mean, low, high = t_interval(values, confidence)
    return mean, low, high, len(values)
