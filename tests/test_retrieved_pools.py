"""Pools of retrieved negatives (`python -m datasets_builder retrieved-pools`): SASRec's best items around each
target, a DATA_DIR the trainer reads as it reads a built one, and bad input named."""

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk
from speeder_fixtures import write_planted_dataset

import baselines
from datasets_builder.__main__ import main as builder
from datasets_builder.build import load_built_dataset, stored_user_items
from datasets_builder.features import train_id_sasrec
from datasets_builder.retrieved_pools import top_k_pool
from metrics.predictions import predictions_path, read_predictions
from modeling_speeder.retrieval_speeder import SpeederSASRecRetriever
from trainer.run import main as run

TINY = ["--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--eval_generate", "false",
        "--max_eval_samples", "8", "--bf16", "false", "--max_steps", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = write_planted_dataset(tmp_path_factory.mktemp("data"), num_sequences=60, modalities=("text", "id"))
    # two sequences per user, so that a user has items outside a row's own history and target
    sequences = load_from_disk(str(data_dir / "sequences"))
    shared = DatasetDict({name: split.map(lambda row: {"user_id": f"u{row['sequence_id'] % 30}"})
                          for name, split in sequences.items()})
    shared.save_to_disk(str(data_dir / "shared"))
    shutil.rmtree(data_dir / "sequences")
    (data_dir / "shared").rename(data_dir / "sequences")
    return data_dir


@pytest.fixture(scope="module")
def pools_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pools") / "k8"
    assert builder(["retrieved-pools", str(data_dir), "--out", str(out), "--num-candidates", "8"]) == 0
    return out


def check_pools(pools_dir, data_dir, splits, retrieved: int):
    """Every pool of `splits` is the target, the `retrieved` best items of SASRec trained on every train row
    (outside the user's items), and random items the user never had."""
    sequences, items, _ = load_built_dataset(pools_dir)
    source = load_built_dataset(data_dir)[0]
    user_items = stored_user_items(source)
    assert any(len(items_of_user) > 7 for items_of_user in user_items.values())  # more than one row's 6 + 1
    result, _, _ = train_id_sasrec(pools_dir)  # seeded, on the source's rows: the model that retrieved the pools
    item_ids = [str(i) for i in items["item_id"]]
    retriever = SpeederSASRecRetriever.from_sasrec(result.model.cpu(), item_ids).eval()
    for name in splits:
        rows = sequences[name]
        assert rows["history"] == source[name]["history"] and rows["target"] == source[name]["target"]
        with torch.no_grad():
            scores = retriever.score([[item_ids[i] for i in history] for history in rows["history"]])
        for row, row_scores in zip(rows, scores):
            candidates = row["candidates"]
            assert len(set(candidates)) == 8 and candidates[row["label"]] == row["target"]
            negatives = set(candidates) - {row["target"]}
            assert not negatives & user_items[row["user_id"]]
            others = [i for i in range(len(items)) if i not in user_items[row["user_id"]]]
            best = sorted(others, key=lambda i: -float(row_scores[i]))[:retrieved]
            assert set(best) <= negatives  # no better item was left out
    assert len(sequences["valid_pools"]) == len(sequences["test_pools"]) == 0  # one retrieved pool per row
    assert sequences["ppt_train"]["ppt_positions"] == source["ppt_train"]["ppt_positions"]


def test_each_pool_is_the_target_and_sasrecs_best_items_the_user_never_had(data_dir, pools_dir, tmp_path):
    check_pools(pools_dir, data_dir, ("valid", "test"), retrieved=7)
    in_sample = tmp_path / "in_sample"
    assert builder(["retrieved-pools", str(data_dir), "--out", str(in_sample), "--num-candidates", "8",
                    "--cross-fit-folds", "0"]) == 0
    check_pools(in_sample, data_dir, ("train", "valid", "test"), retrieved=7)


def test_random_negatives_join_the_retrieved_ones(data_dir, tmp_path):
    mixed = tmp_path / "mixed"
    assert builder(["retrieved-pools", str(data_dir), "--out", str(mixed), "--num-candidates", "8",
                    "--random-negatives", "3"]) == 0
    check_pools(mixed, data_dir, ("valid", "test"), retrieved=4)
    stats = json.loads((mixed / "stats.json").read_text())["retrieved_pools"]
    assert stats["random_negatives"] == 3 and stats["cross_fit_folds"] == 5


def test_top_k_pools_are_the_retrievers_top_k_and_keep_only_rows_it_finds_the_target_for(data_dir, tmp_path):
    out = tmp_path / "top_k"
    assert builder(["retrieved-pools", str(data_dir), "--out", str(out), "--num-candidates", "3", "--top-k-pools"]) == 0
    sequences, items, stats = load_built_dataset(out)
    source = load_built_dataset(data_dir)[0]
    user_items = stored_user_items(source)
    result, _, _ = train_id_sasrec(out)
    item_ids = [str(i) for i in items["item_id"]]
    retriever = SpeederSASRecRetriever.from_sasrec(result.model.cpu(), item_ids).eval()
    for name in ("valid", "test"):
        with torch.no_grad():
            scores = retriever.score([[item_ids[i] for i in history] for history in source[name]["history"]])
        expected = []
        for row, row_scores in zip(source[name], scores):
            others = [i for i in range(len(items)) if i not in user_items[row["user_id"]] - {row["target"]}]
            top = sorted(others, key=lambda i: (-float(row_scores[i]), i))[:3]
            if row["target"] in top:
                expected.append((row["sequence_id"], set(top)))
        kept = sequences[name]
        assert [(r["sequence_id"], set(r["candidates"])) for r in kept] == expected
        assert all(r["candidates"][r["label"]] == r["target"] for r in kept)
        assert stats["retrieved_pools"]["rows"][name] == len(expected)


def test_a_row_whose_target_the_retriever_misses_has_no_top_k_pool():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.5])
    rng = np.random.default_rng(0)
    assert top_k_pool(scores, target=3, user_items={3}, num_candidates=3, rng=rng) is None
    candidates, label = top_k_pool(scores, target=2, user_items={0, 2}, num_candidates=3, rng=rng)
    assert set(candidates) == {1, 2, 4} and candidates[label] == 2  # the user's item 0 is left out


def test_top_k_pools_that_keep_no_row_are_refused(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("datasets_builder.retrieved_pools.top_k_pool", lambda *args: None)
    out = tmp_path / "none"
    assert builder(["retrieved-pools", str(data_dir), "--out", str(out), "--num-candidates", "3", "--top-k-pools",
                    "--cross-fit-folds", "0"]) == 2
    assert "kept no train row" in capsys.readouterr().err and not out.exists()


def test_prefix_rows_are_retrieved_for_their_own_target(data_dir, tmp_path):
    out = tmp_path / "prefixes"
    assert builder(["retrieved-pools", str(data_dir), "--out", str(out), "--num-candidates", "8",
                    "--prefix-min-history", "4"]) == 0
    train = load_built_dataset(out)[0]["train"]
    source = load_built_dataset(data_dir)[0]["train"]
    expected = list(zip(source["history"], source["target"]))
    expected += [(history[:k], history[k]) for history in source["history"] for k in range(4, len(history))]
    assert list(zip(train["history"], train["target"])) == expected and len(expected) > len(source)
    assert all(r["candidates"][r["label"]] == r["target"] and len(set(r["candidates"])) == 8 for r in train)


def test_train_rows_are_retrieved_by_a_sasrec_that_never_saw_their_user(data_dir, tmp_path, monkeypatch):
    train_users = load_built_dataset(data_dir)[0]["train"]["user_id"]
    calls = []
    real = baselines.train_baseline

    def recording(name, path, train_rows=None, **kwargs):
        calls.append(train_rows)
        return real(name, path, train_rows=train_rows, **kwargs)

    monkeypatch.setattr("baselines.train_baseline", recording)
    assert builder(["retrieved-pools", str(data_dir), "--out", str(tmp_path / "pools"), "--num-candidates", "8",
                    "--cross-fit-folds", "3"]) == 0
    assert calls[0] is None and len(calls) == 4  # every train row for valid and test, then one SASRec per fold
    folds = [set(range(len(train_users))) - set(rows) for rows in calls[1:]]
    assert set().union(*folds) == set(range(len(train_users))) and sum(map(len, folds)) == len(train_users)
    for held_out, trained_on in zip(folds, calls[1:]):
        assert not {train_users[i] for i in held_out} & {train_users[i] for i in trained_on}


def test_pools_record_their_source_and_a_rerun_is_skipped(data_dir, pools_dir, capsys):
    stats = json.loads((pools_dir / "stats.json").read_text())
    record = stats["retrieved_pools"]
    assert record["source"] == str(data_dir.resolve()) and record["num_candidates"] == 8 and stats["extra_pools"] == 0
    assert set(record["target_in_retriever_top_k"]) == {"train", "valid", "test"}
    before = (pools_dir / "sequences" / "train").stat().st_mtime_ns
    assert builder(["retrieved-pools", str(data_dir), "--out", str(pools_dir), "--num-candidates", "8"]) == 0
    assert (pools_dir / "sequences" / "train").stat().st_mtime_ns == before


def test_the_trainer_reads_retrieved_pools_with_one_label_per_candidate(pools_dir, tmp_path):
    results = run(["--data_dir", str(pools_dir), "--output_dir", str(tmp_path), *TINY, "--ablation", "wo_stages12"])
    records = read_predictions(predictions_path(tmp_path / "results.json"))
    assert results["test"]["num_samples"] == len(records) > 0
    assert all(len(r["candidates"]) == len(r["scores"]) == 8 and 0 <= r["answer"] < 8 for r in records)


@pytest.mark.parametrize("flags, message", [
    (["--num-candidates", "40"], "--num-candidates must be between 2 and "),
    (["--out", "{data}"], "is DATA_DIR itself"),
    (["--num-candidates", "8", "--random-negatives", "8"], "--random-negatives must be between 0 and 7"),
    (["--num-candidates", "8", "--top-k-pools", "--random-negatives", "2"], "takes no --random-negatives"),
    (["--num-candidates", "8", "--prefix-min-history", "-1"], "--prefix-min-history must be >= 0"),
    (["--num-candidates", "8", "--cross-fit-folds", "1"], "--cross-fit-folds must be 0 (no cross-fitting) or between 2 and"),
])
def test_bad_pool_settings_are_named(data_dir, tmp_path, capsys, flags, message):
    flags = [flag.format(data=data_dir) for flag in flags]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "pools")]
    assert builder(["retrieved-pools", str(data_dir), *out, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "pools").exists()


def test_data_without_features_is_refused_with_the_command_that_makes_them(data_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    for name in ("items", "sequences", "stats.json"):
        (bare / name).parent.mkdir(parents=True, exist_ok=True)
        (bare / name).symlink_to(data_dir / name)
    assert builder(["retrieved-pools", str(bare), "--out", str(tmp_path / "pools")]) == 2
    assert f"python -m datasets_builder features {bare}" in capsys.readouterr().err


def test_sasrec_of_retrieved_pools_trains_on_the_source_rows(data_dir, pools_dir, monkeypatch):
    # the export's SASRec retriever must be the model that retrieved the pools, not one selected on their hard pools
    trained_on = []
    monkeypatch.setattr("baselines.train_baseline", lambda name, path, **_: trained_on.append(path) or None)
    train_id_sasrec(pools_dir)
    assert trained_on == [str(data_dir.resolve())]
