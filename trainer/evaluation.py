"""Evaluation of a Speeder model on stored candidate pools and PPT samples, through the shared metric module."""

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from metrics import compute_choice_metrics, compute_ranking_metrics
from metrics.predictions import PAPER_POOL, answers_from_scores, prediction_rows, write_predictions
from modeling_speeder import SpeederProcessor


def _batches(dataset, batch_size: int, max_samples: int | None):
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    for start in range(0, count, batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, count))]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def score_pools(model, collator: SpeederProcessor, rows: list, batch_size: int = 16, pools_per_sequence: int = 1,
                desc: str = "evaluate") -> tuple[list[list[float]], list[int]]:
    """Candidate scores and the greedy answer (the argmax over the whole vocabulary at the answer position: a
    candidate index, or -1 when it is no candidate label) of every row, from ONE forward pass per batch.

    `pools_per_sequence > 1`: `rows` come in consecutive groups of that many pools of one history (the same
    `history`), and a batch holds whole groups: the history prefix runs once per group (`answer_logits`'
    `group_size`), the logits are the same."""
    model.eval()
    device = next(model.parameters()).device
    speeder = model.get_base_model() if hasattr(model, "get_base_model") else model
    label_token_ids = speeder.config.candidate_label_token_ids
    rows_per_batch = max(1, batch_size // pools_per_sequence) * pools_per_sequence
    scores, answers = [], []
    for batch in tqdm(list(_batches(rows, rows_per_batch, None)), desc=desc, leave=False):
        pool = label_token_ids[:len(batch[0]["candidates"])]
        inputs = _to(collator(batch, with_answer=False, padding_side="left"), device)
        logits = speeder.answer_logits(**inputs, group_size=pools_per_sequence).float()
        scores += logits[:, pool].cpu().tolist()
        answers += [pool.index(token) if token in pool else -1 for token in logits.argmax(-1).tolist()]
    return scores, answers


def recommendation_metrics(scores: list[list[float]], answers: list[int], labels: list[int],
                           generate: bool = True) -> dict:
    """HR@k / NDCG@k from the scores; with `generate`, `valid_ratio`, `hr@1` and `vhr@1` are the paper's, from the
    greedy answer (valid when it is one of the pool's labels); without it they come from the scores."""
    result = {f"{k}_scored" if k in ("hr@1", "vhr@1", "valid_ratio") else k: v
              for k, v in compute_ranking_metrics(scores, labels).items()}
    if generate:
        result.update({k: v for k, v in compute_choice_metrics(answers, labels).items() if k != "accuracy"})
    else:
        result.update({"hr@1": result["hr@1_scored"], "vhr@1": result["hr@1_scored"], "valid_ratio": 1.0})
    return result


def evaluate_recommendation(
    model,
    collator: SpeederProcessor,
    dataset,
    batch_size: int = 16,
    max_samples: int | None = None,
    generate: bool = True,
    desc: str = "evaluate",
) -> tuple[dict, list[dict]]:
    """Metrics (`recommendation_metrics`) and per-sample predictions (`metrics.predictions.PREDICTION_FIELDS`) on a
    split of stored pools, one forward pass per batch (`score_pools`). Without `generate` the answer is the
    top-scored candidate (-1 on a tie)."""
    rows = [row for batch in _batches(dataset, batch_size, max_samples) for row in batch]
    scores, answers = score_pools(model, collator, rows, batch_size, desc=desc)
    if not generate:
        answers = answers_from_scores(scores)
    labels = [int(row["label"]) for row in rows]
    return recommendation_metrics(scores, answers, labels, generate), prediction_rows(rows, answers, scores)


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


def pools_by_sequence(rows: list, extra) -> tuple[list, int] | None:
    """`rows` (the paper's pools) each followed by its sequence's extra pools, and the pools per sequence; None when
    the sequences do not all have the same number of extra pools."""
    extra_of = defaultdict(list)
    for row in extra:
        extra_of[row["sequence_id"]].append(row)
    counts = {len(extra_of[row["sequence_id"]]) for row in rows}
    if len(counts) != 1:
        return None
    grouped = [pool for row in rows
               for pool in [row] + sorted(extra_of[row["sequence_id"]], key=lambda r: r["pool"])]
    return grouped, counts.pop() + 1


def evaluate_split(model, collator: SpeederProcessor, data, split: str, args,
                   predictions_file, desc: str) -> dict:
    """Metrics on a split's stored pools (the paper's one per sequence; the `<split>_pools` extra pools of the same
    sequences under "extra_pools", when the data has them); writes every pool's prediction to `predictions_file`.
    Each sequence's pools are scored together, its history prefix computed once (`score_pools`)."""
    rows = [row for batch in _batches(data[split], args.eval_batch_size, args.max_eval_samples) for row in batch]
    extra = data.get(f"{split}_pools")
    sequences = {row["sequence_id"] for row in rows}
    extra = [row for row in extra if row["sequence_id"] in sequences] if extra is not None else []
    grouped = pools_by_sequence(rows, extra) if extra else None
    if grouped is None:
        grouped = (rows + sorted(extra, key=lambda r: (r["sequence_id"], r["pool"])), 1)
    samples, pools_per_sequence = grouped
    scores, answers = score_pools(model, collator, samples, args.eval_batch_size, pools_per_sequence, desc=desc)
    if not args.eval_generate:
        answers = answers_from_scores(scores)
    records = prediction_rows(samples, answers, scores)
    paper = [r for r in records if r["pool"] == PAPER_POOL]
    extra_records = [r for r in records if r["pool"] != PAPER_POOL]
    metrics = _record_metrics(paper, args.eval_generate)
    if extra_records:
        metrics["extra_pools"] = _record_metrics(extra_records, args.eval_generate)
    write_predictions(predictions_file, paper + extra_records)
    return metrics


def _record_metrics(records: list[dict], generate: bool) -> dict:
    return recommendation_metrics([r["scores"] for r in records], [r["answer"] for r in records],
                                  [r["label"] for r in records], generate)
