"""The one evaluator of every baseline: score each sample's stored candidate pool, then the shared metric module."""

import datasets
import torch

from metrics import compute_ranking_metrics
from metrics.predictions import answers_from_scores, prediction_rows

from .base import SequentialRecommender, pad_histories


@torch.no_grad()
def score_pools(
    model: SequentialRecommender, dataset: datasets.Dataset, batch_size: int = 512, device: str | torch.device = "cpu"
) -> list[list[float]]:
    """Scores `[n][m]` of each sample's stored `candidates` given its `history` (the model in eval mode)."""
    was_training = model.training
    model.eval()
    histories, candidates = dataset["history"][:], dataset["candidates"][:]
    scores = []
    for start in range(0, len(histories), batch_size):
        history = pad_histories(histories[start : start + batch_size], model.max_history_length).to(device)
        pool = torch.as_tensor(candidates[start : start + batch_size], dtype=torch.long, device=device)
        scores.extend(model.score_candidates(history, pool).double().cpu().tolist())
    model.train(was_training)
    return scores


def evaluate_pools(
    model: SequentialRecommender,
    dataset: datasets.Dataset,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    k_values: tuple[int, ...] = (1, 3, 5),
) -> dict[str, float]:
    """`hr@k`, `ndcg@k`, `vhr@1`, `valid_ratio`, `num_samples` on the split's stored pools (k above m skipped)."""
    scores = score_pools(model, dataset, batch_size, device)
    k_values = tuple(k for k in k_values if k <= len(scores[0]))
    return compute_ranking_metrics(scores, dataset["label"][:], k_values)


def predict_pools(
    model: SequentialRecommender,
    splits: dict[str, datasets.Dataset],
    split: str = "test",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], list[dict]]:
    """Metrics on the split's stored pools (plus the `<split>_pools` extra pools under "extra_pools", when the data
    has them) and every pool's prediction record (`metrics.predictions.PREDICTION_FIELDS`)."""
    metrics, records = {}, []
    for name in (split, f"{split}_pools"):
        dataset = splits.get(name)
        if dataset is None or len(dataset) == 0:
            continue
        scores = score_pools(model, dataset, batch_size, device)
        k_values = tuple(k for k in (1, 3, 5) if k <= len(scores[0]))
        result = compute_ranking_metrics(scores, dataset["label"][:], k_values)
        if name == split:
            metrics.update(result)
        else:
            metrics["extra_pools"] = result
        records += prediction_rows(dataset, answers_from_scores(scores), scores)
    return metrics, records
