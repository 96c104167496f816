"""Evaluation of a Speeder model on stored candidate pools and PPT samples, through the shared metric module."""

import torch
from tqdm.auto import tqdm

from metrics import compute_choice_metrics, compute_ranking_metrics
from metrics.predictions import answers_from_scores, prediction_rows, write_predictions
from modeling_speeder import SpeederProcessor


def _batches(dataset, batch_size: int, max_samples: int | None):
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    for start in range(0, count, batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, count))]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_recommendation(
    model,
    collator: SpeederProcessor,
    dataset,
    batch_size: int = 16,
    max_samples: int | None = None,
    generate: bool = True,
    desc: str = "evaluate",
) -> tuple[dict, list[dict]]:
    """Metrics and per-sample predictions (`metrics.predictions.PREDICTION_FIELDS`) on a split of stored pools.

    ONE forward pass per batch gives the logits at the answer position: the candidate label tokens' logits are the
    scores (`hr@k`, `ndcg@k`), and the argmax over the whole vocabulary is the greedy answer, the token that free
    generation would produce. With `generate`, `valid_ratio`, `hr@1` and `vhr@1` are the paper's, from that answer
    (valid when it is one of the pool's labels); without it they come from the scores (`valid_ratio` 1).
    """
    model.eval()
    device = next(model.parameters()).device
    speeder = model.get_base_model() if hasattr(model, "get_base_model") else model
    label_token_ids = speeder.config.candidate_label_token_ids
    scores, answers, samples = [], [], []
    for rows in tqdm(list(_batches(dataset, batch_size, max_samples)), desc=desc, leave=False):
        pool = label_token_ids[:len(rows[0]["candidates"])]
        logits = speeder.answer_logits(**_to(collator(rows, with_answer=False, padding_side="left"), device)).float()
        batch_scores = logits[:, pool].cpu().tolist()
        scores += batch_scores
        if generate:
            answers += [pool.index(token) if token in pool else -1 for token in logits.argmax(-1).tolist()]
        else:
            answers += answers_from_scores(batch_scores)
        samples += rows
    labels = [int(row["label"]) for row in samples]
    result = {f"{k}_scored" if k in ("hr@1", "vhr@1", "valid_ratio") else k: v
              for k, v in compute_ranking_metrics(scores, labels).items()}
    if generate:
        result.update({k: v for k, v in compute_choice_metrics(answers, labels).items() if k != "accuracy"})
    else:
        result.update({"hr@1": result["hr@1_scored"], "vhr@1": result["hr@1_scored"], "valid_ratio": 1.0})
    return result, prediction_rows(samples, answers, scores)


@torch.no_grad()
def evaluate_ppt(model, collator: SpeederProcessor, dataset, batch_size: int = 16, max_samples: int | None = None):
    """PPT accuracy: the yes/no answer with the higher logit at the answer position, against the Eq. 14 label."""
    model.eval()
    device = next(model.parameters()).device
    speeder = model.get_base_model() if hasattr(model, "get_base_model") else model
    answer_ids = collator.prompt_builder.ppt_answer_token_ids
    choices, labels = [], []
    for rows in _batches(dataset, batch_size, max_samples):
        batch = _to(collator(rows, with_answer=False, padding_side="right"), device)
        yes_no = speeder.answer_logits(token_ids=[answer_ids["yes"], answer_ids["no"]], **batch)
        choices += yes_no.argmax(-1).tolist()  # 0 = yes, 1 = no
        labels += [0 if row["ppt_label"] == "yes" else 1 for row in rows]
    if not labels:
        return {}
    return {"ppt_accuracy": compute_choice_metrics(choices, labels)["accuracy"]}


def evaluate_split(model, collator: SpeederProcessor, data, split: str, args,
                   predictions_file, desc: str) -> dict:
    """Metrics on a split's stored pools (the paper's one per sequence; the `<split>_pools` extra pools of the same
    sequences under "extra_pools", when the data has them); writes every pool's prediction to `predictions_file`."""
    metrics, records = evaluate_recommendation(model, collator, data[split], args.eval_batch_size,
                                               args.max_eval_samples, generate=args.eval_generate, desc=desc)
    extra = data.get(f"{split}_pools")
    if extra is not None and len(extra):
        sequences = {record["sequence_id"] for record in records}
        extra = extra.filter(lambda batch: [s in sequences for s in batch["sequence_id"]], batched=True)
        extra_metrics, extra_records = evaluate_recommendation(model, collator, extra, args.eval_batch_size,
                                                               generate=args.eval_generate, desc=f"{desc}, extra pools")
        metrics["extra_pools"] = extra_metrics
        records += extra_records
    write_predictions(predictions_file, records)
    return metrics
