"""Paired comparison of fusion methods scored on the same pairs (evaluate's results.json):
for each method against a reference, per metric, the mean change in percent of the reference's
mean, that change in standard errors of the per-pair differences, and on how many pairs the
method is higher. The standard errors measure how consistently two models differ across images,
not across training runs: set a second seed of the reference beside them for that."""
from __future__ import annotations

import json
import math

from ifes_jax.errors import DataError, InputError


def load_results(paths) -> tuple[dict, dict]:
    """(per-pair scores {method: {pair: {metric: value}}}, means {method: {metric: mean}}) of
    one or more results.json files, which must score the same pairs."""
    per_pair, means, pairs = {}, {}, None
    for path in paths:
        try:
            with open(path) as f:
                results = json.load(f)
            scores = results["per_pair"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not an evaluate results.json ({exc})") from None
        for method, by_pair in scores.items():
            if pairs is None:
                pairs = sorted(by_pair)
            if sorted(by_pair) != pairs:
                raise DataError(f"{path}: {method} is scored on other pairs than {paths[0]}")
            per_pair[method] = by_pair
            means[method] = results[method]
    return per_pair, means


def paired_change(method_scores: dict, reference_scores: dict, metric: str) -> dict:
    """{"change": %, "se": mean difference / its standard error, "higher": pairs, "n": pairs}."""
    diffs = [method_scores[p][metric] - reference_scores[p][metric] for p in reference_scores]
    n = len(diffs)
    mean = sum(diffs) / n
    reference_mean = sum(s[metric] for s in reference_scores.values()) / n
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    se = mean / (spread / math.sqrt(n)) if spread > 0 else (0.0 if mean == 0 else math.inf)
    return {"change": 100.0 * mean / reference_mean, "se": se,
            "higher": sum(d > 0 for d in diffs), "n": n}


def comparison_table(per_pair: dict, reference: str, metrics=None) -> str:
    """A markdown table: one row per method other than `reference`, one column per metric."""
    if reference not in per_pair:
        raise InputError(f"no method {reference!r} in the results (has {', '.join(per_pair)})")
    first = next(iter(per_pair[reference].values()))
    metrics = list(metrics or first)
    rows = [f"| vs {reference} | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics)]
    for method, scores in per_pair.items():
        if method == reference:
            continue
        cells = []
        for metric in metrics:
            c = paired_change(scores, per_pair[reference], metric)
            cells.append(f"{c['change']:+.1f} % ({c['se']:+.1f} se, {c['higher']}/{c['n']})")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def means_table(means: dict, metrics=None) -> str:
    """A markdown table of each method's mean scores (rows: methods)."""
    metrics = list(metrics or next(iter(means.values())))
    rows = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for method, scores in means.items():
        rows.append(f"| {method} | " + " | ".join(f"{scores[m]:.4g}" for m in metrics) + " |")
    return "\n".join(rows) + "\n"
