"""bench/serving.py on the tiny backbone: the command makes its folder, writes the JSON and the PNG, and its scores
without the shared instruction prefix equal `recommend_batch`'s on mixed batches. No timing assertions: these machines
are noisy."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from speeder_fixtures import item_inputs, tiny_model

# bench/ is a folder of scripts, not an installed package: load the module from its path (works with any runner).
_spec = importlib.util.spec_from_file_location(
    "bench_serving", Path(__file__).resolve().parents[1] / "bench" / "serving.py")
serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving)

ROW_KEYS = {"method", "batch_size", "requests", "recs_per_s", "ms_per_rec", "ms_per_batch", "seconds"}


def test_bench_writes_json_and_png(tmp_path):
    report = serving.main(["--batch-sizes", "1,2", "--requests", "3", "--repeats", "1", "--items", "30",
                           "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "serving.json").read_text())
    assert saved["benchmark"] == "speeder-serving" and saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert (tmp_path / "serving.png").stat().st_size > 0
    rows = {(row["method"], row["batch_size"]): row for row in saved["rows"]}
    assert set(rows) == {(method, size) for method in serving.METHODS for size in (1, 2)}
    for row in rows.values():
        assert set(row) == ROW_KEYS and row["recs_per_s"] > 0 and len(row["seconds"]) == 1
        assert row["requests"] == (3 if row["batch_size"] == 1 else 4)  # whole batches
    model = saved["model"]
    assert model["items"] == 30 and model["candidates_per_request"] == 5 and model["history_length"] == 10
    assert 0 < model["prefix_tokens"] < model["prompt_tokens"]
    assert saved["prefix_check"]["same_rankings"] is True and saved["prefix_check"]["max_abs_score_diff"] < 1e-3
    assert "| 2 |" in saved["table"] and saved["machine"]["torch_threads"] == 1


@pytest.mark.parametrize("history_indices", [True, False])
def test_recommend_batch_with_its_shared_prefix_scores_as_the_whole_prompts_do(history_indices):
    model, tokenizer = tiny_model(history_indices=history_indices)
    model.add_items([f"m{i}" for i in range(20)], **item_inputs(20))
    model.eval()
    histories = [["m1"], ["m2", "m3", "m4", "m5", "m6", "m7"], ["m8", "m9", "m10"]]
    candidates = [["m11", "m12", "m13", "m14", "m15"], ["m16"], ["m17", "m18"]]
    plain = serving.scores_without_shared_prefix(model, tokenizer, histories, candidates)
    shared = model.recommend_batch(histories, candidates, tokenizer=tokenizer)
    for pool, ranking, row in zip(candidates, shared, plain):
        assert [item for item, _ in ranking] == sorted(pool, key=lambda item: -row[pool.index(item)].item())
        assert torch.allclose(torch.tensor([s for _, s in ranking]),
                              torch.stack([row[pool.index(item)] for item, _ in ranking]), atol=1e-4)
    prefix = serving.shared_prefix_tokens(model, tokenizer, histories)
    item_token = tokenizer.convert_tokens_to_ids("<item>")
    instruction = model.prompt_builder(tokenizer).recommendation(3, 5).input_ids
    assert prefix == instruction.index(item_token)  # everything before the first history item
