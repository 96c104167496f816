"""Serving an exported Speeder: recommendation from the whole catalogue (item-cache and SASRec retrieval, one
re-ranking pass), the "sequential-recommendation" pipeline in a fresh process with only the folder, and the errors
bad requests get (issue 19 items 1, 4 and 7)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from speeder_fixtures import item_inputs, run_isolated, tiny_model, write_planted_dataset
from transformers import pipeline

from baselines import SASRec, SASRecConfig, pad_histories
from datasets_builder.build import load_built_dataset
from datasets_builder.features import compute_item_features
from hub_upload import __main__ as cli
from hub_upload.export import CUSTOM_PIPELINES, export_run
from modeling_speeder import (
    PIPELINE_TASK, SpeederForSequentialRec, SpeederRecommendationPipeline, SpeederSASRecRetriever
)
from modeling_speeder.retrieval_speeder import SASREC_RETRIEVER_FILE, item_cache_scores
from trainer.full_ranking import list_metrics, rerank_bound
from trainer.full_ranking import main as full_ranking
from trainer.run import main as train

NUM_ITEMS = 24


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A stage-1 run on the planted data whose ID features come from SASRec (3 epochs), exported with that SASRec as
    retriever."""
    root = tmp_path_factory.mktemp("serving")
    data_dir = write_planted_dataset(root / "data", num_items=NUM_ITEMS)
    compute_item_features(data_dir, text_encoder="none", vision_encoder="none", id_encoder="sasrec",
                          id_encoder_kwargs={"epochs": 3, "hidden_size": 8, "show_progress": False, "device": "cpu"})
    train(["--data_dir", str(data_dir), "--output_dir", str(root / "run"), "--stages", "1",
           "--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
           "--num_train_epochs", "1", "--max_train_samples", "16", "--ppt_per_sequence", "0.5",
           "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none", "--bf16", "false",
           "--save_strategy", "no", "--eval_strategy", "no", "--eval_generate", "false", "--max_eval_samples", "8"])
    return export_run(root / "run", root / "export", sasrec_retriever=True)


@pytest.fixture(scope="module")
def model(exported) -> SpeederForSequentialRec:
    return SpeederForSequentialRec.from_pretrained(exported).eval()


def forward_passes(model) -> list:
    """The (rows, tokens) of every backbone call from now on."""
    calls = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    return calls


def test_export_ships_the_pipeline_and_the_sasrec_retriever(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"pipeline_speeder.py", "retrieval_speeder.py", "retriever_sasrec.safetensors"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    assert CUSTOM_PIPELINES[PIPELINE_TASK] == {"impl": "pipeline_speeder.SpeederRecommendationPipeline",
                                               "pt": ["AutoModel"]}
    info = json.loads((exported / "speeder_export.json").read_text())
    assert info["pipeline"] == PIPELINE_TASK and info["retrievers"] == ["item_cache", "sasrec"]
    # retrained with the ID features' manifest options: the shipped SASRec IS Speeder's ID encoder
    assert info["sasrec_retriever"]["equals_id_features"] is True
    assert info["sasrec_retriever"]["options"]["epochs"] == 3 and info["sasrec_retriever"]["seed"] == 42
    assert 'recommend(history, top_k=3, retriever="sasrec")' in (exported / "README.md").read_text()


def test_sasrec_retriever_scores_exactly_like_the_baseline_it_was_exported_from():
    torch.manual_seed(0)
    sasrec = SASRec(SASRecConfig(hidden_size=16, max_seq_length=6, n_heads=2, inner_size=32), num_items=30).eval()
    item_ids = [f"m{i}" for i in range(30)]
    retriever = SpeederSASRecRetriever.from_sasrec(sasrec, item_ids)
    histories = [[3, 1, 4, 1, 5, 9, 2, 6], [5], [8, 9]]  # the first is longer than max_seq_length
    expected = sasrec.item_logits(sasrec(pad_histories(histories, sasrec.max_history_length)))
    got = retriever.score([[f"m{i}" for i in history] for history in histories])
    assert torch.allclose(got, expected, atol=1e-5)


def test_item_cache_retrieval_is_the_cosine_to_the_mean_history_embedding(model):
    cache = model.item_cache
    history = ["item3", "item4", "item5"]
    scores = item_cache_scores(cache.embeddings, [cache.rows_of(history)])[0]
    mean = cache.embeddings[cache.rows_of(history)].mean(0)
    assert torch.allclose(scores, torch.nn.functional.cosine_similarity(cache.embeddings, mean[None]), atol=1e-5)
    order = [cache.item_ids[row] for row in scores.argsort(descending=True).tolist()]
    assert model.retrieve([history])[0] == [item for item in order if item not in history][:5]
    assert model.retrieve([history], num_candidates=3, exclude_history=False)[0] == order[:3]


@pytest.mark.parametrize("retriever", ["item_cache", "sasrec"])
def test_recommend_without_candidates_reranks_the_retrieved_items_in_one_pass(model, retriever):
    history = ["item7", "item8", "item9", "item10"]
    retrieved = model.retrieve([history], retriever=retriever)[0]
    assert len(retrieved) == len(model.config.candidate_labels) == 5 and not set(retrieved) & set(history)
    calls = forward_passes(model)
    ranked = model.recommend(history, retriever=retriever)
    assert len(calls) == 1
    assert sorted(item for item, _ in ranked) == sorted(retrieved)
    assert ranked == model.recommend(history, retrieved)  # the same as handing the retrieved items as candidates
    assert model.recommend(history, retriever=retriever, top_k=2) == ranked[:2]
    three = model.recommend(history, retriever=retriever, num_candidates=3)
    assert sorted(item for item, _ in three) == sorted(model.retrieve([history], 3, retriever)[0])
    kept = model.retrieve([history], retriever=retriever, exclude_history=False)[0]
    unseen = [item for item in kept if item not in history]  # the history's items now compete with the rest
    assert len(kept) == 5 and unseen == retrieved[: len(unseen)]


def test_sasrec_retrieval_follows_the_exported_sasrec_scores(model):
    history = ["item1", "item2", "item3"]
    scores = model.load_sasrec_retriever().score([history])[0]
    best = [f"item{i}" for i in scores.argsort(descending=True).tolist() if f"item{i}" not in history][:5]
    assert model.retrieve([history], retriever="sasrec")[0] == best


def test_batched_recommendations_equal_one_at_a_time_in_one_pass(model):
    histories = [["item1", "item2"], ["item5", "item6", "item7", "item8", "item9"], ["item20"]]
    calls = forward_passes(model)
    batched = model.recommend_batch(histories, top_k=3)
    # one pass: the instruction every prompt starts with once, then the rest of every row attending to it
    (one, prefix), (rows, rest) = calls
    assert (one, rows) == (1, 3) and prefix >= 5 and prefix + rest == model.get_processor()(
        histories=histories, candidates=model.retrieve(histories))["input_ids"].shape[1]
    for history, ranking in zip(histories, batched):
        single = model.recommend(history, top_k=3)
        assert calls[-1][0] == 1  # a batch of one: one plain pass
        assert [item for item, _ in ranking] == [item for item, _ in single]
        assert [score for _, score in ranking] == pytest.approx([score for _, score in single], abs=1e-4)
    calls.clear()
    assert len(model.recommend_batch(histories, batch_size=2)) == 3 and [n for n, _ in calls] == [1, 2, 1]
    given = model.recommend_batch(histories, [["item3", "item4"], ["item1"], ["item2", "item3", "item4"]])
    assert [len(ranking) for ranking in given] == [2, 1, 3]


def test_bad_requests_name_what_is_wrong(model):
    cases = [
        (lambda: model.recommend(["item1", "nope", "gone"]), r"Unknown item ids \['nope', 'gone'\]"),
        (lambda: model.recommend_batch([["item1", "nope"], ["gone"]]), r"Unknown item ids \['nope', 'gone'\]"),
        (lambda: model.recommend([]), "history_item_ids is empty"),
        (lambda: model.recommend_batch([["item1"], []]), r"histories\[1\] is empty"),
        (lambda: model.recommend(["item1"], ["item2", "item3", "item2"]), r"repeats \['item2'\]"),
        (lambda: model.recommend(["item1"], top_k=NUM_ITEMS + 1),
         rf"top_k={NUM_ITEMS + 1} is above the catalogue size: the item cache holds {NUM_ITEMS} items"),
        (lambda: model.recommend(["item1"], top_k=6), r"top_k=6 is above the 5 candidates retrieved"),
        (lambda: model.recommend(["item1"], num_candidates=3, top_k=4), r"top_k=4 is above the 3 candidates"),
        (lambda: model.recommend(["item1"], num_candidates=6), r"num_candidates must be an integer in 1..5"),
        (lambda: model.recommend(["item1"], retriever="bm25"),
         r"Unknown retriever 'bm25': the available retrievers are \['item_cache', 'sasrec'\]"),
        (lambda: model.recommend(["item1"], ["item2"], num_candidates=3), "not both"),
        (lambda: model.recommend(["item1"], top_k=0), "top_k must be a positive integer"),
        (lambda: model.recommend({"item1"}), "no order"),
        (lambda: model.recommend_batch([["item1"]], [["item2"], ["item3"]]), "one list of candidates per history"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    everything = [f"item{i}" for i in range(NUM_ITEMS)]
    with pytest.raises(ValueError, match=r"has 0 of the item cache's 24 items once the history is left out, nothing"):
        model.recommend(everything)
    with pytest.raises(ValueError, match=r"has only 2 of the item cache's 24 items .*, fewer than num_candidates=3"):
        model.recommend(everything[2:], num_candidates=3)
    assert len(model.recommend(everything[2:])) == 2  # the default K shrinks to what is left
    assert len(model.recommend(everything, exclude_history=False)) == 5


def test_sasrec_retriever_absent_or_blind_is_a_clear_error(model, tmp_path):
    bare, tokenizer = tiny_model()
    bare.add_items([f"m{i}" for i in range(8)], **item_inputs(8))
    assert bare.available_retrievers() == ["item_cache"]
    with pytest.raises(ValueError, match=r"has none: the available retrievers are \['item_cache'\]"):
        bare.recommend(["m1"], tokenizer=tokenizer, retriever="sasrec")
    assert len(bare.recommend(["m1"], tokenizer=tokenizer)) == 5
    grown = SpeederForSequentialRec.from_pretrained(model.name_or_path)
    grown.add_items(["new"], text_features=torch.randn(1, grown.config.text_feature_size))
    with pytest.raises(ValueError, match=r"knows none of the items of \['history_item_ids'\]"):
        grown.recommend(["new"], retriever="sasrec")
    assert "new" not in grown.retrieve([["item1"]], retriever="sasrec", num_candidates=5)[0]


def test_pipeline_serves_the_folder_in_a_fresh_process(exported):
    """Only transformers and the folder: ids, titles, batches, the SASRec retriever and bad input."""
    output = run_isolated(f"""
        import json
        from transformers import AutoModel, pipeline
        folder = {str(exported)!r}
        recommender = pipeline("sequential-recommendation", model=folder, trust_remote_code=True, device="cpu")
        assert type(recommender).__name__ == "SpeederRecommendationPipeline"
        assert type(recommender).__module__.startswith("transformers_modules"), type(recommender).__module__
        model = recommender.model
        calls = []
        model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
        by_id = recommender(["item1", "item2", "item3"], top_k=3)
        by_title = recommender(["item 1", "item2", "item 3"], top_k=3)
        histories = [["item1", "item2", "item3"], ["item 10"], ["item4", "item5"]]
        batch = recommender(histories, top_k=2)
        assert calls == [1, 1, 1, 3], calls  # the batch of three in one pass, after its shared instruction once
        sasrec = recommender(["item1", "item2"], retriever="sasrec", num_candidates=4)
        given = recommender(["item1"], candidate_item_ids=["item 5", "item6"])
        errors = {{}}
        for name, call in [("titles", lambda: recommender(["item 1", "no such film", "nope"])),
                           ("empty", lambda: recommender([])),
                           ("empty_in_batch", lambda: recommender([["item1"], []])),
                           ("repeated", lambda: recommender(["item1"], candidate_item_ids=["item2", "item 2"])),
                           ("top_k", lambda: recommender(["item1"], top_k=1000)),
                           ("mixed", lambda: recommender(["item1", ["item2"]]))]:
            try:
                call()
            except ValueError as error:
                errors[name] = str(error)
        reference = [model.recommend(h, top_k=2) for h in [["item1", "item2", "item3"], ["item10"], ["item4", "item5"]]]
        print(json.dumps({{"by_id": by_id, "by_title": by_title, "batch": batch, "sasrec": sasrec, "given": given,
                          "errors": errors, "reference": reference}}))
    """)
    result = json.loads(output.strip().splitlines()[-1])
    assert result["by_id"] == result["by_title"] and len(result["by_id"]) == 3
    assert set(result["by_id"][0]) == {"item_id", "title", "score"}
    assert all(row["title"] == row["item_id"].replace("item", "item ") for row in result["by_id"])
    assert [row["item_id"] for row in result["batch"][0]] == [row["item_id"] for row in result["by_id"][:2]]
    for ranking, reference in zip(result["batch"], result["reference"]):
        assert [row["item_id"] for row in ranking] == [item for item, _ in reference]
        assert [row["score"] for row in ranking] == pytest.approx([score for _, score in reference], abs=1e-4)
    assert len(result["sasrec"]) == 4 and {row["item_id"] for row in result["given"]} == {"item5", "item6"}
    errors = result["errors"]
    assert set(errors) == {"titles", "empty", "empty_in_batch", "repeated", "top_k", "mixed"}, errors
    assert "Unknown history items ['no such film', 'nope']" in errors["titles"]
    assert "empty" in errors["empty"] and "History 1 is empty" in errors["empty_in_batch"]
    assert "repeats ['item2']" in errors["repeated"]
    assert "top_k=1000 is above the catalogue size" in errors["top_k"]
    assert "mixes" in errors["mixed"]


def test_registered_pipeline_takes_a_model_object_and_refuses_shared_titles():
    model, tokenizer = tiny_model()
    model.add_items([str(i) for i in range(8)], titles=["Heat", "Alien", "Heat", *map(str, range(4, 9))],
                    **item_inputs(8))
    recommender = pipeline(PIPELINE_TASK, model=model, tokenizer=tokenizer, device="cpu")
    assert isinstance(recommender, SpeederRecommendationPipeline)
    ranked = recommender(["Alien", 3], top_k=2, exclude_history=False)  # a title and an int id
    expected = model.recommend(["1", "3"], top_k=2, exclude_history=False, tokenizer=tokenizer)
    assert [row["item_id"] for row in ranked] == [item for item, _ in expected]
    assert recommender(["4"])[0]["item_id"] != "4"  # the id "4" wins over the title "4" of item "3"
    with pytest.raises(ValueError, match=r"Titles shared by several items, \{'Heat': \['0', '2'\]\}"):
        recommender(["Heat", "Alien"])
    with pytest.raises(ValueError, match=r"Unknown arguments \['temperature'\]"):
        recommender(["Alien"], temperature=0.5)


def test_export_cli_passes_sasrec_retriever(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "export_run", lambda run_dir, out, **options: calls.append(options) or Path(out))
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--sasrec-retriever"]) == 0
    assert cli.main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert [options["sasrec_retriever"] for options in calls] == [True, False]


def test_resaved_folder_with_added_items_still_serves_the_pipeline_and_sasrec(exported, tmp_path):
    """add_items then save_pretrained, from the repository's classes and from remote code alone: the new folder keeps
    the pipeline file, the tokenizer, the SASRec retriever and the grown item cache."""
    grown = SpeederForSequentialRec.from_pretrained(exported)
    grown.add_items(["new"], titles=["Brand new"], text_features=torch.randn(1, grown.config.text_feature_size))
    grown.save_pretrained(tmp_path / "repo")
    output = run_isolated(f"""
        import json, torch
        from pathlib import Path
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(exported)!r}, trust_remote_code=True)
        model.add_items(["fresh"], titles=["Fresh"], text_features=torch.randn(1, model.config.text_feature_size))
        model.save_pretrained({str(tmp_path / "remote")!r})
        result = {{}}
        for name, new in (("repo", "Brand new"), ("remote", "Fresh")):
            folder = Path({str(tmp_path)!r}) / name
            recommender = pipeline("sequential-recommendation", model=str(folder), trust_remote_code=True,
                                   device="cpu")
            result[name] = {{
                "files": sorted(p.name for p in folder.iterdir()),
                "by_title": recommender([new, "item 2"], top_k=2),
                "sasrec": recommender(["item1", "item2"], retriever="sasrec", num_candidates=3),
                "retrievers": recommender.model.available_retrievers(),
                "items": len(recommender.model.item_cache),
            }}
        print(json.dumps(result))
    """)
    result = json.loads(output.strip().splitlines()[-1])
    for name in ("repo", "remote"):
        served = result[name]
        assert {"pipeline_speeder.py", "retriever_sasrec.safetensors", "tokenizer.json", "item_table.jsonl",
                "config.json", "model.safetensors"} <= set(served["files"]), served["files"]
        assert len(served["by_title"]) == 2 and len(served["sasrec"]) == 3
        assert served["retrievers"] == ["item_cache", "sasrec"] and served["items"] == NUM_ITEMS + 1


def test_recommend_example_ranks_the_pool_and_the_whole_catalogue(exported):
    script = Path(__file__).resolve().parents[1] / "scripts" / "recommend_example.py"
    result = subprocess.run([sys.executable, str(script), str(exported), str(exported.parent / "data")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Speeder's ranking of the candidate pool" in result.stdout
    for retriever in ("item_cache", "sasrec"):
        assert f"whole catalogue ({NUM_ITEMS} items; the '{retriever}' retriever's 5 best" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"hit@1", "catalogue_hit@5_item_cache", "catalogue_hit@5_sasrec"}


def test_list_metrics_score_one_relevant_item_by_its_rank():
    assert list_metrics(["a", "b", "c"], "a", 10) == {"hr@1": 1.0, "recall@10": 1.0, "ndcg@10": 1.0}
    assert list_metrics(["a", "b", "c"], "c", 10)["ndcg@10"] == pytest.approx(0.5)  # 1 / log2(3 + 1)
    assert list_metrics(["a", "b", "c"], "c", 2) == {"hr@1": 0.0, "recall@2": 0.0, "ndcg@2": 0.0}


def test_full_ranking_compares_sasrec_with_sasrec_then_speeder_on_the_same_lists(exported, tmp_path):
    """Issue 19 item 3: SASRec's top 10 of the whole catalogue, and the same list with its first K re-ranked by
    Speeder in one pass; both scored with intervals from the records the JSON keeps."""
    out = tmp_path / "full_ranking.json"
    summary = full_ranking(
        [str(exported), "--data-dir", str(exported.parent / "data"), "--split", "test", "--out", str(out),
         "--num-candidates", "4", "--top-k", "6"])
    result = json.loads(out.read_text())
    records = result["records"]
    model = SpeederForSequentialRec.from_pretrained(exported).eval()
    retriever = model.load_sasrec_retriever()
    data, items, _ = load_built_dataset(exported.parent / "data")
    item_ids = list(items["item_id"])
    assert len(records) == len(data["test"]) == result["settings"]["num_sequences"]
    for row, record in zip(data["test"], records):
        history = [item_ids[i] for i in row["history"]]
        scores = retriever.score([history])[0]
        scores[[retriever.rows[item_id] for item_id in history]] = float("-inf")
        expected = [retriever.item_ids[i] for i in torch.sort(scores, descending=True, stable=True).indices[:6]]
        assert record["sasrec"] == expected
        assert sorted(record["sasrec_speeder"][:4]) == sorted(expected[:4])
        assert record["sasrec_speeder"][4:] == expected[4:]
        assert [item_id for item_id, _ in model.recommend(history, expected[:4])] == record["sasrec_speeder"][:4]
        assert record["target"] == item_ids[row["target"]]
        if record["target"] in expected[:4]:  # a perfect re-ranker of the first 4 puts the target first
            assert record["rerank_bound"][0] == record["target"]
        else:
            assert record["rerank_bound"] == expected
        assert sorted(record["rerank_bound"]) == sorted(expected)
    for name in ("sasrec", "sasrec_speeder", "rerank_bound"):
        for metric in ("hr@1", "recall@6", "ndcg@6"):
            values = [list_metrics(r[name], r["target"], 6)[metric] for r in records]
            assert summary[name][metric]["mean"] == pytest.approx(sum(values) / len(values))
    assert summary["difference"]["recall@6"]["mean"] == 0.0  # re-ranking inside the list keeps its items
    assert summary["rerank_bound"]["ndcg@6"]["mean"] >= summary["sasrec_speeder"]["ndcg@6"]["mean"]
    assert "SASRec → Speeder" in result["table"]


def test_full_ranking_reranks_more_candidates_than_it_returns(exported, tmp_path):
    # retrieve 4, re-rank them in one pass, score the top 3: the product's top-k out of K candidates
    out = tmp_path / "full_ranking.json"
    summary = full_ranking([str(exported), "--data-dir", str(exported.parent / "data"), "--split", "test", "--out",
                            str(out), "--num-candidates", "4", "--top-k", "3"])
    model = SpeederForSequentialRec.from_pretrained(exported).eval()
    data, items, _ = load_built_dataset(exported.parent / "data")
    item_ids = list(items["item_id"])
    for row, record in zip(data["test"], json.loads(out.read_text())["records"]):
        history = [item_ids[i] for i in row["history"]]
        assert len(record["sasrec"]) == 4
        assert record["sasrec_speeder"] == [item_id for item_id, _ in model.recommend(history, record["sasrec"])]
        assert record["metrics"]["sasrec_speeder"] == list_metrics(record["sasrec_speeder"][:3], record["target"], 3)
    assert set(summary["sasrec"]) == {"hr@1", "recall@3", "ndcg@3"}


def test_rerank_bound_moves_the_target_first_only_from_the_reranked_items():
    assert rerank_bound(["a", "b", "c", "d"], "c", 3) == ["c", "a", "b", "d"]
    assert rerank_bound(["a", "b", "c", "d"], "d", 3) == ["a", "b", "c", "d"]  # below the re-ranked items
    assert rerank_bound(["a", "b", "c", "d"], "x", 3) == ["a", "b", "c", "d"]


def test_full_ranking_names_a_folder_without_sasrec_and_a_pool_too_large(exported, tmp_path):
    folder = tmp_path / "no-sasrec"
    shutil.copytree(exported, folder)
    (folder / SASREC_RETRIEVER_FILE).unlink()
    data_dir = str(exported.parent / "data")
    with pytest.raises(ValueError, match="--sasrec-retriever"):
        full_ranking([str(folder), "--data-dir", data_dir, "--out", str(tmp_path / "x.json")])
    with pytest.raises(ValueError, match="--num-candidates must lie in"):
        full_ranking([str(exported), "--data-dir", data_dir, "--out", str(tmp_path / "x.json"),
                      "--num-candidates", "27"])
    with pytest.raises(FileNotFoundError, match="export a run first"):
        full_ranking([str(tmp_path / "missing"), "--data-dir", data_dir, "--out", str(tmp_path / "x.json")])
