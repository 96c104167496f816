"""Recommendation metrics shared by Speeder, its trainer and every baseline (an `evaluate` module loaded by path)."""

from pathlib import Path

import evaluate

METRIC_PATH = str(Path(__file__).with_name("speeder_recommendation.py"))


def load_recommendation_metric() -> evaluate.Metric:
    """Load the metric from this repository's file, so it works offline (the Hub ships no copy)."""
    return evaluate.load(METRIC_PATH)


def compute_ranking_metrics(scores, labels, k_values=(1, 3, 5)) -> dict:
    """HR@k / NDCG@k from per-candidate scores `[num_samples][m]` and the true candidate index per sample."""
    return load_recommendation_metric().compute(predictions=scores, references=labels, k_values=list(k_values))


def compute_choice_metrics(choices, labels) -> dict:
    """ValidRatio / HR@1 / VHR@1 from parsed answers (candidate index, or -1 for an invalid answer)."""
    return load_recommendation_metric().compute(predictions=choices, references=labels)


__all__ = ["METRIC_PATH", "load_recommendation_metric", "compute_ranking_metrics", "compute_choice_metrics"]
