"""Per-sample predictions, bootstrap intervals, non-finite scores, and the one-pass evaluation's greedy answer."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from speeder_fixtures import TINY_MODEL_KWARGS, tiny_model

from metrics import compute_ranking_metrics
from metrics.predictions import (
    answers_from_scores,
    bootstrap_interval,
    mean_paired_difference,
    paired_difference,
    prediction_rows,
    predictions_path,
    read_predictions,
    sequence_hits,
    write_predictions,
)
from trainer.collator import ItemFeatureTable, SpeederCollator
from types import SimpleNamespace

from datasets import Dataset, DatasetDict

from trainer.evaluation import evaluate_recommendation, evaluate_split

NAN = float("nan")
REPO = Path(__file__).resolve().parents[1]


def test_a_pool_with_a_non_finite_score_is_invalid_and_never_a_hit():
    result = compute_ranking_metrics([[NAN] * 5, [0.0, 1.0, NAN, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0, 0.0]], [0, 1, 2])
    assert result["hr@1"] == pytest.approx(0.0)  # the last pool ranks its target second
    assert result["hr@5"] == pytest.approx(1 / 3)
    assert result["valid_ratio"] == pytest.approx(1 / 3) and result["num_non_finite"] == 2


def test_answers_from_scores_name_a_strict_winner_only():
    assert answers_from_scores([[0.1, 0.9, 0.2], [1.0, 1.0, 0.0], [NAN, NAN, NAN], [NAN, 0.0, -1.0]]) == [1, -1, -1, 1]


def test_predictions_round_trip_and_hits_per_sequence(tmp_path):
    samples = [{"sequence_id": 7, "candidates": [3, 4], "label": 1},
               {"sequence_id": 7, "pool": 1, "candidates": [5, 4], "label": 1},
               {"sequence_id": 7, "pool": 2, "candidates": [4, 6], "label": 0},
               {"sequence_id": 9, "candidates": [1, 2], "label": 0}]
    records = prediction_rows(samples, answers=[1, 0, 0, -1], scores=[[0, 1], [1, 0], [1, 0], [0, 0]])
    path = write_predictions(predictions_path(tmp_path / "results.json"), records)
    assert path.name == "results.predictions.jsonl" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert read_predictions(path) == records
    assert sequence_hits(records, "paper") == {7: 1.0, 9: 0.0}
    assert sequence_hits(records, "extra") == {7: 0.5}
    assert sequence_hits(records, "all") == {7: pytest.approx(2 / 3), 9: 0.0}


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_sequences():
    small = bootstrap_interval([1.0, 0.0] * 20, seed=1)
    large = bootstrap_interval([1.0, 0.0] * 500, seed=1)
    for interval in (small, large):
        assert interval["mean"] == pytest.approx(0.5) and interval["low"] < 0.5 < interval["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 3  # width ~ 1/sqrt(n)
    assert bootstrap_interval([1.0] * 10) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 10}
    with pytest.raises(ValueError, match="No values"):
        bootstrap_interval([])


def test_paired_difference_is_paired_and_refuses_other_sequences():
    a = {i: float(i % 2) for i in range(200)}
    b = {i: float(i % 2) for i in range(200)}
    assert paired_difference(a, b) == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 200}  # same hits: no spread
    better = {i: 1.0 for i in range(200)}
    difference = paired_difference(better, b)
    assert difference["low"] > 0 and difference["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different sequences"):
        paired_difference(a, {i: 1.0 for i in range(1, 201)})


def test_mean_paired_difference_averages_runs_and_resamples_sequences_alike():
    base = {i: float(i % 2) for i in range(200)}
    plus_half = {i: 1.0 for i in range(200)}  # +0.5 on average against base
    mean = mean_paired_difference([(plus_half, base), (base, base)])
    assert mean["mean"] == pytest.approx(0.25) and mean["runs"] == 2 and mean["n"] == 200
    assert 0 < mean["low"] < 0.25 < mean["high"]
    # a run and its mirror cancel per sequence: every sequence's mean difference is 0, so no spread at all
    assert mean_paired_difference([(plus_half, base), (base, plus_half)]) == {
        "mean": 0.0, "low": 0.0, "high": 0.0, "n": 200, "runs": 2}
    with pytest.raises(ValueError, match="different sequences"):
        mean_paired_difference([(plus_half, base), ({i: 1.0 for i in range(1, 201)}, base)])
    with pytest.raises(ValueError, match="at least one"):
        mean_paired_difference([])


def test_one_pass_evaluation_answers_as_greedy_generation_would():
    model, tokenizer = tiny_model(seed=3)
    model.eval()
    labels = model.config.candidate_label_token_ids
    # an untied head that can only say a candidate label or one of a few other tokens: answers valid and invalid
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    keep = torch.zeros(head.out_features, dtype=torch.bool)
    keep[labels] = True
    keep[:4] = True
    head.weight.data = torch.where(keep[:, None], model.lm_head.weight.detach() * 20, torch.zeros(()))
    model.lm_head = head
    features = ItemFeatureTable(
        {m: torch.randn(20, TINY_MODEL_KWARGS[f"{m}_feature_size"]) for m in ("text", "vision", "id")},
        {m: torch.ones(20, dtype=torch.bool) for m in ("text", "vision", "id")},
    )
    rows = [{"sequence_id": 100 + i, "history": list(range(i, i + 2 + i % 4)),
             "candidates": [(10 + j + i) % 20 for j in range(5)], "label": i % 5} for i in range(12)]
    collator = SpeederCollator(model.prompt_builder(tokenizer), features, ("text", "vision", "id"), max_history=8)
    metrics, records = evaluate_recommendation(model, collator, rows, batch_size=5, generate=True)

    scoring = SpeederCollator(collator.prompt_builder, features, ("text", "vision", "id"), max_history=8,
                              with_answer=False, padding_side="left")
    generated = []
    for start in range(0, len(rows), 5):
        batch = scoring(rows[start:start + 5])
        output = model.generate(**batch, max_new_tokens=1, do_sample=False)
        generated += [labels.index(t) if t in labels else -1 for t in output[:, batch["input_ids"].shape[1]].tolist()]
    assert [r["answer"] for r in records] == generated
    assert 0 < sum(a >= 0 for a in generated) < len(rows)  # the test sees both valid and invalid answers
    assert [r["sequence_id"] for r in records] == [row["sequence_id"] for row in rows]
    hits = sum(r["answer"] == r["label"] for r in records)
    assert metrics["vhr@1"] == pytest.approx(hits / len(rows))
    assert metrics["valid_ratio"] == pytest.approx(sum(a >= 0 for a in generated) / len(rows))
    assert all(len(r["scores"]) == 5 and all(math.isfinite(s) for s in r["scores"]) for r in records)


def _pools_of_three_histories(num_pools: int = 4) -> list[dict]:
    """Pool 0 (the paper's) then pools 1.. of each of three sequences, with different history lengths."""
    return [{"sequence_id": s, "pool": p, "history": list(range(s, s + 2 + 2 * s)),
             "candidates": [(7 + 3 * p + j + s) % 20 for j in range(5)], "label": (s + p) % 5}
            for s in range(3) for p in range(num_pools)]


def test_a_shared_history_prefix_runs_once_per_sequence_and_gives_the_same_logits():
    model, tokenizer = tiny_model(seed=4, gate_bias_init=1.0)
    model.eval()
    features = ItemFeatureTable(
        {m: torch.randn(20, TINY_MODEL_KWARGS[f"{m}_feature_size"]) for m in ("text", "vision", "id")},
        {m: torch.ones(20, dtype=torch.bool) for m in ("text", "vision", "id")},
    )
    collator = SpeederCollator(model.prompt_builder(tokenizer), features, ("text", "vision", "id"), max_history=8,
                               with_answer=False, padding_side="left")
    batch = collator(_pools_of_three_histories())
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        one_pass = model.answer_logits(**batch)
        shared = model.answer_logits(**batch, group_size=4)
    finally:
        hook.remove()
    length = batch["input_ids"].shape[1]
    assert seen[0] == (12, length)  # one pass over every row
    (groups, prefix), (rows, rest) = seen[1:]
    assert (groups, rows) == (3, 12) and prefix + rest == length and prefix > length // 2  # the history, once
    torch.testing.assert_close(shared, one_pass, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="group_size 5 must divide"):
        model.answer_logits(**batch, group_size=5)


def test_evaluate_split_scores_each_sequence_with_its_extra_pools_as_one_pass_each_would(tmp_path):
    model, tokenizer = tiny_model(seed=5, gate_bias_init=1.0)
    features = ItemFeatureTable(
        {m: torch.randn(20, TINY_MODEL_KWARGS[f"{m}_feature_size"]) for m in ("text", "vision", "id")},
        {m: torch.ones(20, dtype=torch.bool) for m in ("text", "vision", "id")},
    )
    collator = SpeederCollator(model.prompt_builder(tokenizer), features, ("text", "vision", "id"), max_history=8)
    pools = _pools_of_three_histories()
    paper = [{k: v for k, v in row.items() if k != "pool"} for row in pools if row["pool"] == 0]
    extra = [row for row in pools if row["pool"] > 0][::-1]  # stored in another order than the paper's pools
    data = DatasetDict({"test": Dataset.from_list(paper), "test_pools": Dataset.from_list(extra)})
    args = SimpleNamespace(eval_batch_size=8, max_eval_samples=None, eval_generate=True)
    metrics = evaluate_split(model, collator, data, "test", args, tmp_path / "results.predictions.jsonl", "test")
    alone, _ = evaluate_recommendation(model, collator, paper, batch_size=8)
    alone_extra, _ = evaluate_recommendation(model, collator, extra, batch_size=8)
    for key in ("hr@3", "ndcg@5", "vhr@1", "valid_ratio"):
        assert metrics[key] == pytest.approx(alone[key], abs=1e-6), key
        assert metrics["extra_pools"][key] == pytest.approx(alone_extra[key], abs=1e-6), key
    assert metrics["extra_pools"]["num_samples"] == 9 and metrics["num_samples"] == 3
    records = read_predictions(tmp_path / "results.predictions.jsonl")
    assert [(r["sequence_id"], r["pool"]) for r in records[:3]] == [(0, 0), (1, 0), (2, 0)]  # the paper's first
    assert sorted((r["sequence_id"], r["pool"]) for r in records) == sorted((r["sequence_id"], r["pool"]) for r in pools)


def test_compare_runs_pairs_two_runs_on_the_same_pools(tmp_path):
    samples = [{"sequence_id": s, "pool": p, "candidates": [1, 2], "label": 0} for s in range(30) for p in (0, 1)]
    for name, answers in (("a", [0] * 60), ("b", [s % 2 for s in range(30) for _ in (0, 1)])):
        (tmp_path / name / "stage3").mkdir(parents=True)
        (tmp_path / name / "stage3" / "stage_metrics.json").write_text("{}")
        write_predictions(tmp_path / name / "stage3" / "stage_metrics.predictions.jsonl",
                          prediction_rows(samples, answers))
    out = tmp_path / "comparison.json"
    result = subprocess.run([sys.executable, "scripts/compare_runs.py", str(tmp_path / "a"), str(tmp_path / "b"),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    comparison = json.loads(out.read_text())
    assert comparison["paper"]["a"]["mean"] == 1.0 and comparison["paper"]["b"]["mean"] == 0.5
    assert comparison["extra"]["a_minus_b"]["mean"] == 0.5 and comparison["extra"]["a_minus_b"]["low"] > 0


def test_compare_runs_averages_pairs_of_runs_over_the_same_pools(tmp_path):
    samples = [{"sequence_id": s, "pool": 0, "candidates": [1, 2], "label": 0} for s in range(40)]
    runs = {"a1": [0] * 40, "b1": [1] * 40, "a2": [0] * 40, "b2": [0] * 40}  # A wins every pool, then ties
    for name, answers in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "stage3_metrics.json").write_text("{}")  # a results folder's flat layout
        write_predictions(folder / "stage3_metrics.predictions.jsonl", prediction_rows(samples, answers))
    out = tmp_path / "seeds.json"
    result = subprocess.run([sys.executable, "scripts/compare_runs.py", str(tmp_path / "a1"), str(tmp_path / "b1"),
                             "--pair", str(tmp_path / "a2"), str(tmp_path / "b2"), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    comparison = json.loads(out.read_text())
    assert [pair["paper"]["a_minus_b"]["mean"] for pair in comparison["pairs"]] == [1.0, 0.0]
    assert comparison["mean_over_pairs"]["paper"] == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 40, "runs": 2}
