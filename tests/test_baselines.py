"""ID-based baselines: each learns a planted pattern on the stored pools, seeded, with the json and errors promised."""

import json
import random

import datasets
import pytest
import torch
from speeder_fixtures import chance_bound, learning_seed
from torch.nn import functional as F

from baselines import (
    MODELS,
    BERT4Rec,
    GRU4Rec,
    GRU4RecConfig,
    SASRec,
    SASRecConfig,
    build_train_windows,
    load_baseline_data,
    pad_histories,
    train_baseline,
)
from baselines.__main__ import main

NUM_ITEMS = 20
POOL_SIZE = 5
TINY = dict(hidden_size=16, max_seq_length=8, n_layers=1, dropout=0.1, batch_size=32, show_progress=False)
TINY_ATTENTION = dict(n_heads=2, inner_size=32)


def _split(rng: random.Random, num_sequences: int, first_id: int, planted: bool) -> dict:
    rows = {k: [] for k in ("sequence_id", "user_id", "history", "target", "candidates", "label")}
    for i in range(num_sequences):
        start, length = rng.randrange(NUM_ITEMS), rng.randint(4, 10)
        if planted:  # item i is always followed by item i + 1 (mod N)
            sequence = [(start + t) % NUM_ITEMS for t in range(length)]
        else:
            sequence = [rng.randrange(NUM_ITEMS) for _ in range(length)]
        target = sequence[-1]
        others = rng.sample([j for j in range(NUM_ITEMS) if j not in sequence], POOL_SIZE - 1)
        candidates = others + [target]
        rng.shuffle(candidates)
        rows["sequence_id"].append(first_id + i)
        rows["user_id"].append(f"u{first_id + i}")
        rows["history"].append(sequence[:-1])
        rows["target"].append(target)
        rows["candidates"].append(candidates)
        rows["label"].append(candidates.index(target))
    return rows


def write_data(path, planted: bool = True, seed: int = 0):
    """A DATA_DIR in the data builder's format: sequences/ (DatasetDict) and items/ (Dataset)."""
    rng = random.Random(seed)
    features = datasets.Features(
        {
            "sequence_id": datasets.Value("int64"),
            "user_id": datasets.Value("string"),
            "history": datasets.List(datasets.Value("int64")),
            "target": datasets.Value("int64"),
            "candidates": datasets.List(datasets.Value("int64")),
            "label": datasets.Value("int64"),
        }
    )
    sizes = {"train": 240, "valid": 60, "test": 60}
    splits, first_id = {}, 0
    for split, size in sizes.items():
        splits[split] = datasets.Dataset.from_dict(_split(rng, size, first_id, planted), features=features)
        first_id += size
    splits["ppt_train"] = datasets.Dataset.from_dict({"sequence_id": [0], "positions": [[0, 1, 2]], "answer": ["yes"]})
    datasets.DatasetDict(splits).save_to_disk(str(path / "sequences"))
    items = {"item_index": list(range(NUM_ITEMS)), "item_id": [f"i{j}" for j in range(NUM_ITEMS)]}
    items["title"] = [f"Item {j}" for j in range(NUM_ITEMS)]
    datasets.Dataset.from_dict(items).save_to_disk(str(path / "items"))
    return path


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("planted"))


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("sasrec", TINY_ATTENTION),
        ("sasrec", {**TINY_ATTENTION, "loss_type": "bce"}),
        ("gru4rec", {"loss_type": "ce"}),
        ("bert4rec", TINY_ATTENTION),
    ],
)
def test_baseline_learns_planted_next_item_pattern(planted_dir, name, overrides):
    result = train_baseline(name, planted_dir, seed=learning_seed(0), epochs=40, patience=10, **TINY, **overrides)
    # above chance's 1-in-1000 binomial bound on the 60 test pools (0.383; chance is 1 / 5)
    assert result.test_metrics["hr@1"] >= chance_bound(result.test_metrics["num_samples"]), result.test_metrics
    assert result.test_metrics["valid_ratio"] == 1.0 and result.test_metrics["num_samples"] == 60
    assert result.valid_metrics["hr@1"] == max(h["valid_hr@1"] for h in result.history)


def test_pop_ranks_by_next_item_frequency_whatever_the_history(planted_dir):
    result = train_baseline("pop", planted_dir, seed=0, epochs=30, patience=30, batch_size=32, show_progress=False)
    splits, _ = load_baseline_data(planted_dir)
    windows = build_train_windows(splits["train"], result.model.max_history_length + 1)
    counts = torch.bincount(windows[:, 1:][windows[:, 1:] >= 0], minlength=NUM_ITEMS)
    scores = result.item_embeddings.squeeze(1)
    frequent, rare = counts.argmax(), counts.argmin()
    assert counts[frequent] > counts[rare] and scores[frequent] > scores[rare]
    assert torch.corrcoef(torch.stack([scores, counts.float()]))[0, 1] > 0.8
    candidates = torch.tensor([[frequent, rare]] * 2)
    with torch.no_grad():
        ranked = result.model.score_candidates(pad_histories([[1, 2, 3], [7]], 8), candidates)
    assert torch.equal(ranked[0], ranked[1]) and ranked[0, 0] > ranked[0, 1]


def test_same_seed_gives_same_model_and_metrics(planted_dir):
    first, second, other = (
        train_baseline("sasrec", planted_dir, seed=seed, epochs=2, **TINY, **TINY_ATTENTION) for seed in (3, 3, 4)
    )
    assert torch.equal(first.item_embeddings, second.item_embeddings)
    assert first.test_metrics == second.test_metrics and first.history == second.history
    assert not torch.equal(first.item_embeddings, other.item_embeddings)


def test_training_leaves_callers_random_state_alone(planted_dir):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_baseline("gru4rec", planted_dir, epochs=1, hidden_size=8, show_progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_item_embeddings_are_the_item_table_in_item_index_order(planted_dir, name):
    result = train_baseline(name, planted_dir, epochs=1, hidden_size=8, max_seq_length=8, show_progress=False)
    emb = result.item_embeddings
    width = 1 if name == "pop" else 8  # Pop's item table is one score per item
    assert emb.shape == (NUM_ITEMS, width) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    # the score of candidate i is the sequence representation against row i (+ BERT4Rec's output bias)
    model = result.model
    histories = pad_histories([[1, 2, 3], [7]], model.max_history_length)
    candidates = torch.tensor([[0, 5, 19], [19, 4, 4]])
    with torch.no_grad():
        expected = torch.einsum("bd,bmd->bm", model(histories), emb[candidates])
        if isinstance(model, BERT4Rec):
            expected += model.output_bias[candidates]
        torch.testing.assert_close(model.score_candidates(histories, candidates), expected)


def test_json_written_with_metrics_config_and_time(planted_dir):
    result = train_baseline("gru4rec", planted_dir, seed=1, epochs=2, hidden_size=8, show_progress=False)
    path = planted_dir / "baselines" / "gru4rec.json"
    assert result.output_path == path
    report = json.loads(path.read_text())
    assert report["test_metrics"] == result.test_metrics and report["valid_metrics"] == result.valid_metrics
    assert report["config"]["hidden_size"] == 8 and report["training_args"]["learning_rate"] == 1e-3
    assert report["epochs_trained"] == 2 and report["seed"] == 1 and report["wall_time_s"] >= 0
    assert report["num_items"] == NUM_ITEMS and report["num_train_targets"] > 240
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_early_stopping_stops_after_patience_epochs_without_better_valid_hr1(planted_dir):
    result = train_baseline("sasrec", planted_dir, epochs=200, patience=2, **TINY, **TINY_ATTENTION)
    assert result.epochs_trained < 200
    assert result.epochs_trained - result.best_epoch == 2


def test_unknown_name_lists_valid_names(planted_dir):
    with pytest.raises(ValueError, match=r"valid names: \['bert4rec', 'gru4rec', 'pop', 'sasrec'\]"):
        train_baseline("caser", planted_dir)


def test_unknown_override_lists_valid_fields(planted_dir):
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['hidden_dim'\].*'hidden_size'.*'patience'"):
        train_baseline("sasrec", planted_dir, hidden_dim=8)
    with pytest.raises(ValueError, match="n_heads"):  # GRU4Rec has no attention heads
        train_baseline("gru4rec", planted_dir, n_heads=2)
    with pytest.raises(ValueError, match=r"loss_type must be one of \['ce', 'bce'\]"):
        train_baseline("sasrec", planted_dir, loss_type="bpr")


def test_data_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="datasets_builder"):
        train_baseline("sasrec", tmp_path)
    write_data(tmp_path)
    datasets.Dataset.from_dict({"item_index": [0, 1, 2]}).save_to_disk(str(tmp_path / "items_small"))
    (tmp_path / "items").rename(tmp_path / "items_full")
    (tmp_path / "items_small").rename(tmp_path / "items")
    with pytest.raises(ValueError, match="has 3 rows"):
        train_baseline("sasrec", tmp_path)


def test_train_windows_hold_every_next_item_transition_once():
    train = datasets.Dataset.from_dict({"history": [[0, 1, 2, 3, 4, 5], [7]], "target": [6, 8]})
    windows = build_train_windows(train, window_length=4)
    assert windows.tolist() == [[3, 4, 5, 6], [0, 1, 2, 3], [7, 8, -1, -1]]


@pytest.mark.parametrize("model", [SASRec(SASRecConfig(hidden_size=8, max_seq_length=6), 10),
                                   GRU4Rec(GRU4RecConfig(hidden_size=8, max_seq_length=6), 10)])
def test_one_pass_loss_equals_the_mean_loss_over_every_prefix(model):
    model.eval()  # no dropout: the two computations must agree exactly
    sequence = torch.tensor([[4, 2, 9, 0, 5, 1, 3], [6, 6, 1, -1, -1, -1, -1]])
    prefix_losses = [
        F.cross_entropy(model.item_logits(model(row[:t].unsqueeze(0))), row[t : t + 1], reduction="sum")
        for row in sequence for t in range(1, int((row >= 0).sum()))
    ]
    torch.testing.assert_close(model.calculate_loss({"sequence": sequence}), torch.stack(prefix_losses).mean())


def test_too_wide_history_batch_is_refused():
    model = SASRec(SASRecConfig(hidden_size=8, max_seq_length=4), num_items=10)
    with pytest.raises(ValueError, match="pad_histories"):
        model(torch.zeros(2, 5, dtype=torch.long))
    assert pad_histories([[1, 2, 3, 4, 5, 6], [9]], 4).tolist() == [[3, 4, 5, 6], [9, -1, -1, -1]]


def test_cli_prints_results_table(planted_dir, capsys):
    assert main([str(planted_dir), "--models", "sasrec,bert4rec", "--epochs", "1", "--hidden-size", "8",
                 "--set", "n_layers=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| model | valid hr@1 | test hr@1 |" in out
    assert "| sasrec |" in out and "| bert4rec |" in out
