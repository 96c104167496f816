"""Metrics of sequential recommendation over a small candidate pool, as Speeder and LLaRA report them.

Two input forms, chosen by the type of `predictions`:

* **choices** (`int` per sample): the candidate index a model answered, `-1` when the answer named no candidate or
  more than one (free generation). Returns `valid_ratio` = valid / all, `hr@1` = correct / valid,
  `vhr@1` = valid_ratio × hr@1 = correct / all, and `accuracy` = correct / all (used for the PPT yes/no task).
* **scores** (`list[float]` of length m per sample): one score per candidate, higher is better (one-pass scoring,
  every answer valid). Returns `hr@k` and `ndcg@k` for each k in `k_values`, plus `valid_ratio` = 1 and
  `vhr@1` = `hr@1`. Ties count against the true item (its rank is 1 + the number of other candidates scoring at
  least as high), so a model that scores every candidate equally gets no credit. A pool with any non-finite score
  (NaN, inf) is counted as invalid and as a miss at every k: `valid_ratio` = pools with finite scores / all, and
  `num_non_finite` says how many there were.

`references` is the index of the true item in the sample's candidate pool.
"""

import math

import datasets
import evaluate

_DESCRIPTION = __doc__
_CITATION = """\
@article{speeder2025,
  title={A Remarkably Efficient Paradigm to Multimodal Large Language Models for Sequential Recommendation},
  journal={arXiv preprint arXiv:2511.05885},
  year={2025}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: per sample, either the chosen candidate index (int, -1 = invalid answer) or the list of candidate
        scores (higher = better).
    references: per sample, the index of the true item in the candidate pool.
    k_values: cut-offs for HR@k / NDCG@k in the scores form (default [1, 3, 5]).
Returns:
    dict of floats, see the module docstring.
Examples:
    >>> metric = evaluate.load("metrics/speeder_recommendation.py")
    >>> metric.compute(predictions=[2, -1, 0, 1], references=[2, 0, 1, 1])
    {'valid_ratio': 0.75, 'hr@1': 0.6666666666666666, 'vhr@1': 0.5, 'accuracy': 0.5, 'num_samples': 4}
"""


class SpeederRecommendation(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
                ),
            ],
        )

    def _compute(self, predictions, references, k_values=(1, 3, 5)):
        if len(predictions) == 0:
            raise ValueError("No predictions were given: the evaluation split is empty.")
        if isinstance(predictions[0], (list, tuple)):
            return _ranking_metrics(predictions, references, k_values)
        return _choice_metrics(predictions, references)


def _choice_metrics(choices, labels) -> dict:
    total = len(choices)
    valid = sum(1 for c in choices if c >= 0)
    correct = sum(1 for c, y in zip(choices, labels) if c >= 0 and c == y)
    return {
        "valid_ratio": valid / total,
        "hr@1": correct / valid if valid else 0.0,
        "vhr@1": correct / total,
        "accuracy": correct / total,
        "num_samples": total,
    }


def _ranking_metrics(scores, labels, k_values) -> dict:
    num_candidates = len(scores[0])
    for k in k_values:
        if not 1 <= k <= num_candidates:
            raise ValueError(f"k_values must lie in 1..{num_candidates} (the pool size), got {k}.")
    ranks, non_finite = [], 0
    for row, label in zip(scores, labels):
        if len(row) != num_candidates:
            raise ValueError(f"Every sample needs {num_candidates} candidate scores, got a row with {len(row)}.")
        if not 0 <= label < num_candidates:
            raise ValueError(f"Reference {label} is not a candidate index in 0..{num_candidates - 1}.")
        if not all(math.isfinite(s) for s in row):
            non_finite += 1
            ranks.append(num_candidates + 1)  # below every cut-off: never a hit
            continue
        target = row[label]
        ranks.append(1 + sum(1 for j, s in enumerate(row) if j != label and s >= target))
    total = len(ranks)
    result = {}
    for k in k_values:
        result[f"hr@{k}"] = sum(1 for r in ranks if r <= k) / total
        result[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in ranks if r <= k) / total
    result["valid_ratio"] = (total - non_finite) / total
    result["vhr@1"] = sum(1 for r in ranks if r == 1) / total
    result["num_samples"] = total
    result["num_non_finite"] = non_finite
    return result
