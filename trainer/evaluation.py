"""Evaluation of a Speeder model on stored candidate pools and PPT samples, through the shared metric module."""

import torch
from tqdm.auto import tqdm

from metrics import compute_choice_metrics, compute_ranking_metrics

from .collator import SpeederCollator


def _batches(dataset, batch_size: int, max_samples: int | None):
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    for start in range(0, count, batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, count))]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_recommendation(
    model,
    collator: SpeederCollator,
    dataset,
    batch_size: int = 16,
    max_samples: int | None = None,
    generate: bool = True,
    desc: str = "evaluate",
) -> dict:
    """Metrics on a split of recommendation samples.

    One-pass scoring of the candidate label tokens gives `hr@k` / `ndcg@k`; free generation of one answer token gives
    the paper's `valid_ratio`, `hr@1` and `vhr@1` (a valid answer names exactly one candidate of the pool). Without
    `generate`, `hr@1` and `vhr@1` come from scoring and `valid_ratio` is 1 by construction.
    """
    model.eval()
    device = next(model.parameters()).device
    speeder = model.get_base_model() if hasattr(model, "get_base_model") else model
    label_token_ids = speeder.config.candidate_label_token_ids
    scoring = SpeederCollator(collator.prompt_builder, collator.item_features, collator.modalities,
                              collator.max_history, with_answer=False, padding_side="left")
    scores, labels, choices = [], [], []
    for rows in tqdm(list(_batches(dataset, batch_size, max_samples)), desc=desc, leave=False):
        batch = _to(scoring(rows), device)
        num_candidates = len(rows[0]["candidates"])
        scores += speeder.score_candidates(num_candidates=num_candidates, **batch).float().cpu().tolist()
        labels += [int(row["label"]) for row in rows]
        if generate:
            output = model.generate(**batch, max_new_tokens=1, do_sample=False)
            answers = output[:, batch["input_ids"].shape[1]].tolist()
            pool = label_token_ids[:num_candidates]
            choices += [pool.index(a) if a in pool else -1 for a in answers]
    result = {f"{k}_scored" if k in ("hr@1", "vhr@1", "valid_ratio") else k: v
              for k, v in compute_ranking_metrics(scores, labels).items()}
    result.update(compute_choice_metrics(choices, labels) if generate else {
        "hr@1": result["hr@1_scored"], "vhr@1": result["hr@1_scored"], "valid_ratio": 1.0})
    result.pop("accuracy", None)
    return result


@torch.no_grad()
def evaluate_ppt(model, collator: SpeederCollator, dataset, batch_size: int = 16, max_samples: int | None = None):
    """PPT accuracy: the yes/no answer with the higher logit at the answer position, against the Eq. 14 label."""
    model.eval()
    device = next(model.parameters()).device
    speeder = model.get_base_model() if hasattr(model, "get_base_model") else model
    answer_ids = collator.prompt_builder.ppt_answer_token_ids
    scoring = SpeederCollator(collator.prompt_builder, collator.item_features, collator.modalities,
                              collator.max_history, with_answer=False)
    choices, labels = [], []
    for rows in _batches(dataset, batch_size, max_samples):
        batch = _to(scoring(rows), device)
        yes_no = speeder.answer_logits(token_ids=[answer_ids["yes"], answer_ids["no"]], **batch)
        choices += yes_no.argmax(-1).tolist()  # 0 = yes, 1 = no
        labels += [0 if row["ppt_label"] == "yes" else 1 for row in rows]
    if not labels:
        return {}
    return {"ppt_accuracy": compute_choice_metrics(choices, labels)["accuracy"]}
