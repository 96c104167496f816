"""Per-sample predictions and paired bootstrap intervals over evaluated sequences.

Every model writes one JSON line per evaluated pool beside its metrics (`PREDICTION_FIELDS`): the sequence it
belongs to, which stored pool (0 = the paper's pool, 1..K = the builder's extra seeded pools), the candidate item
indices, the true candidate's index, the model's candidate scores (or null) and its answer (the chosen candidate
index, -1 for an invalid or tied answer). A hit is `answer == label`, so VHR@1 is the mean hit; any figure and any
comparison between models can be recomputed from these files.

Intervals resample sequences, not pools (the K + 1 pools of one sequence share its history): a sequence's value is
its mean hit over the pools kept, and a paired comparison resamples the same sequences for both models.
"""

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from modeling_speeder.file_utils import write_text_atomically

PREDICTION_FIELDS = ("sequence_id", "pool", "candidates", "label", "scores", "answer")
PAPER_POOL = 0
NUM_RESAMPLES = 2000
CONFIDENCE = 0.95


def predictions_path(metrics_path: str | os.PathLike) -> Path:
    """Where the predictions behind a metrics file `X.json` live: `X.predictions.jsonl` beside it."""
    metrics_path = Path(metrics_path)
    return metrics_path.with_name(f"{metrics_path.stem}.predictions.jsonl")


def answers_from_scores(scores: list[list[float]]) -> list[int]:
    """The candidate each row's scores rank strictly first; -1 when the top score is tied or not finite (as the
    metric module counts ties against the true item)."""
    answers = []
    for row in scores:
        best = max(range(len(row)), key=lambda j: row[j] if math.isfinite(row[j]) else -math.inf)
        unique = math.isfinite(row[best]) and sum(1 for s in row if s >= row[best]) == 1
        answers.append(best if unique else -1)
    return answers


def prediction_rows(samples, answers: list[int], scores: list[list[float]] | None = None) -> list[dict]:
    """One record per sample (a dict-like row with `sequence_id`, `candidates`, `label` and optionally `pool`)."""
    records = []
    for index, (sample, answer) in enumerate(zip(samples, answers)):
        records.append({
            "sequence_id": int(sample["sequence_id"]),
            "pool": int(sample.get("pool", PAPER_POOL)),
            "candidates": [int(c) for c in sample["candidates"]],
            "label": int(sample["label"]),
            "scores": None if scores is None else [float(s) for s in scores[index]],
            "answer": int(answer),
        })
    return records


def write_predictions(path: str | os.PathLike, records: list[dict]) -> Path:
    """Writes `records` as JSON lines, atomically (a temporary file renamed into place)."""
    lines = "".join(json.dumps({k: record[k] for k in PREDICTION_FIELDS}) + "\n" for record in records)
    return write_text_atomically(path, lines)


def read_predictions(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate the model first; it writes its predictions there.")
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sequence_hits(records: list[dict], pools: str = "paper") -> dict[int, float]:
    """Mean hit per sequence over the pools kept: "paper" (pool 0), "extra" (pools >= 1) or "all"."""
    if pools not in ("paper", "extra", "all"):
        raise ValueError(f"pools must be 'paper', 'extra' or 'all', got {pools!r}.")
    hits = defaultdict(list)
    for record in records:
        paper = record["pool"] == PAPER_POOL
        if pools == "all" or paper == (pools == "paper"):
            hits[record["sequence_id"]].append(float(record["answer"] == record["label"]))
    return {sequence: sum(values) / len(values) for sequence, values in hits.items()}


def _resample_means(values: np.ndarray, num_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(num_resamples, len(values)))].mean(1)


def bootstrap_interval(values, num_resamples: int = NUM_RESAMPLES, seed: int = 0,
                       confidence: float = CONFIDENCE) -> dict:
    """Mean of per-sequence `values` with its percentile bootstrap interval: `{"mean", "low", "high", "n"}`."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("No values to bootstrap: the predictions hold no sequence for these pools.")
    means = _resample_means(values, num_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "n": int(values.size)}


def paired_difference(hits_a: dict[int, float], hits_b: dict[int, float], num_resamples: int = NUM_RESAMPLES,
                      seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Mean of A minus B over the same sequences, with a paired bootstrap interval (both resampled alike).

    Raises ValueError when the two were not evaluated on the same sequences."""
    if set(hits_a) != set(hits_b):
        only_a, only_b = sorted(set(hits_a) - set(hits_b)), sorted(set(hits_b) - set(hits_a))
        raise ValueError(f"The predictions cover different sequences ({len(only_a)} only in the first, e.g. "
                         f"{only_a[:5]}; {len(only_b)} only in the second, e.g. {only_b[:5]}): evaluate both on the "
                         "same split and pools.")
    keys = sorted(hits_a)
    return bootstrap_interval([hits_a[k] - hits_b[k] for k in keys], num_resamples, seed, confidence)


def mean_paired_difference(pairs: list[tuple[dict[int, float], dict[int, float]]],
                           num_resamples: int = NUM_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """Mean over runs of A minus B (one `(hits_a, hits_b)` pair per run, e.g. per training seed, all on the same
    sequences) with a bootstrap interval that resamples sequences alike for every run: the interval of a mean over
    seeds, paired per sequence. Adds `"runs"`, the number of pairs.

    Raises ValueError when the runs were not evaluated on the same sequences."""
    if not pairs:
        raise ValueError("No runs to compare: pass at least one (hits_a, hits_b) pair.")
    keys = set(pairs[0][0])
    for hits_a, hits_b in pairs:
        if set(hits_a) != keys or set(hits_b) != keys:
            raise ValueError("The runs cover different sequences: a mean over runs needs every run evaluated on the "
                             "same split and pools.")
    keys = sorted(keys)
    per_sequence = [sum(a[k] - b[k] for a, b in pairs) / len(pairs) for k in keys]
    return bootstrap_interval(per_sequence, num_resamples, seed, confidence) | {"runs": len(pairs)}
