"""The builder's extra seeded candidate pools: `valid_pools` / `test_pools`, K per valid / test sequence."""

import random
from pathlib import Path

import numpy as np
import pytest

from datasets_builder import BuildConfig, build_dataset, load_built_dataset
from datasets_builder.__main__ import main
from datasets_builder.build import POOL_FEATURES, SEQUENCE_FEATURES
from datasets_builder.sequencing import POOL_SPLIT_NAMES, sample_candidates, sample_extra_pools

HOUR, DAY = 3600, 86400
NUM_ITEMS = 25
SMALL = {"min_item_interactions": 1, "min_sequence_length": 4, "num_candidates": 5}
ORIGINAL_SPLITS = ("train", "valid", "test", "ppt_train", "ppt_valid")


def _write_log(folder: Path, num_users: int = 30, seed: int = 0) -> dict:
    """A RecBole `.inter` file: each user has a 6-item session, then 3 days later a 2-item session that the sequence
    filter drops (its items still count as interacted for the pools)."""
    rng = random.Random(seed)
    rows, interacted = [], {}
    for user in range(num_users):
        items = rng.sample(range(NUM_ITEMS), 8)
        start = 1_600_000_000 + user * 10 * DAY
        rows += [(f"u{user}", f"i{item}", start + k * HOUR) for k, item in enumerate(items[:6])]
        rows += [(f"u{user}", f"i{item}", start + 3 * DAY + k * HOUR) for k, item in enumerate(items[6:])]
        interacted[f"u{user}"] = {f"i{item}" for item in items}
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in rows]
    (folder / "log.inter").write_text("\n".join(lines) + "\n")
    return {"format": "recbole", "interactions": str(folder / "log.inter"), "interacted": interacted}


def _build(folder: Path, name: str, **overrides):
    """Builds `folder/name` from `folder/log.inter` (written first when missing); returns what the build wrote."""
    if not (folder / "log.inter").exists():
        _write_log(folder)
    config = BuildConfig(format="recbole", interactions=str(folder / "log.inter"), **{**SMALL, **overrides})
    stats = build_dataset(config, folder / name)
    sequences, items, _ = load_built_dataset(folder / name)
    return sequences, items, stats


@pytest.fixture
def built(tmp_path):
    """The default build (K = 10) and what every user interacted with."""
    interacted = _write_log(tmp_path)["interacted"]
    sequences, items, stats = _build(tmp_path, "k10")
    return sequences, items, stats, interacted


def _pool_key(row: dict) -> tuple:
    return tuple(row["candidates"]), row["label"]


def test_k_pool_rows_per_valid_and_test_sequence_in_order(built):
    sequences, _, stats, _ = built
    assert stats["extra_pools"] == stats["config"]["extra_pools"] == 10
    for name in ("valid", "test"):
        original, pools = sequences[name], sequences[f"{name}_pools"]
        assert pools.features == POOL_FEATURES and set(POOL_FEATURES) == set(SEQUENCE_FEATURES) | {"pool"}
        assert len(pools) == 10 * len(original) > 0 and stats["pool_split_sizes"][f"{name}_pools"] == len(pools)
        for k, row in enumerate(original):
            block = pools.select(range(10 * k, 10 * (k + 1))).to_list()
            assert [r["pool"] for r in block] == list(range(1, 11))
            for column in ("sequence_id", "user_id", "history", "target"):
                assert all(r[column] == row[column] for r in block), column


def test_pools_hold_the_target_once_and_only_never_interacted_negatives(built):
    sequences, items, _, interacted = built
    index = {item_id: k for k, item_id in enumerate(items["item_id"])}
    dropped_session_items_seen = False
    for name in POOL_SPLIT_NAMES:
        for row in sequences[name]:
            candidates = row["candidates"]
            assert len(candidates) == len(set(candidates)) == SMALL["num_candidates"]
            assert candidates[row["label"]] == row["target"] and candidates.count(row["target"]) == 1
            user_items = {index[item] for item in interacted[row["user_id"]] if item in index}
            assert not (set(candidates) - {row["target"]}) & user_items, (row, user_items)
            dropped_session_items_seen |= bool(user_items - set(row["history"]) - {row["target"]})
    assert dropped_session_items_seen  # the rule covered items outside the stored sequence


def test_zero_extra_pools_gives_empty_splits_and_leaves_the_original_splits_as_they_are(tmp_path):
    with_pools, _, stats = _build(tmp_path, "k10")
    without, _, stats_without = _build(tmp_path, "k0", extra_pools=0)
    for name in POOL_SPLIT_NAMES:
        assert name in without and len(without[name]) == 0 and without[name].features == POOL_FEATURES
    assert stats_without["pool_split_sizes"] == {"valid_pools": 0, "test_pools": 0}
    for name in ORIGINAL_SPLITS:
        assert without[name].to_dict() == with_pools[name].to_dict(), name
    assert stats_without["fingerprints"] == stats["fingerprints"]  # the ID features need no recomputing
    assert stats_without["split_sizes"] == stats["split_sizes"]


def test_the_fourth_seed_stream_leaves_the_first_three_unchanged():
    # the build spawns 4 children where it spawned 3: the split, candidate and PPT streams stay bit-identical
    for seed in (0, 42, 2**31 + 7):
        four, three = np.random.SeedSequence(seed).spawn(4), np.random.SeedSequence(seed).spawn(3)
        for a, b in zip(four[:3], three):
            assert (a.generate_state(8) == b.generate_state(8)).all()
            draws = [np.random.default_rng(child).integers(0, 2**62, 16) for child in (a, b)]
            assert (draws[0] == draws[1]).all()


def test_pools_are_deterministic_for_a_seed_and_differ_across_the_k(tmp_path):
    first, _, _ = _build(tmp_path, "a", seed=3)
    again, _, _ = _build(tmp_path, "b", seed=3)
    other, _, _ = _build(tmp_path, "c", seed=4)
    for name in POOL_SPLIT_NAMES:
        assert first[name].to_dict() == again[name].to_dict()
        assert first[name]["candidates"] != other[name]["candidates"]
    original = {row["sequence_id"]: _pool_key(row) for name in ("valid", "test") for row in first[name]}
    for name in POOL_SPLIT_NAMES:
        pools = first[name].to_list()
        by_sequence = {}
        for row in pools:
            by_sequence.setdefault(row["sequence_id"], []).append(_pool_key(row))
        for sequence_id, keys in by_sequence.items():
            assert len(set(keys)) > 1, sequence_id  # 20 negatives to draw from: 10 equal pools would be a bug
        # not the paper's pool replayed: the extra pools come from their own stream
        assert sum(_pool_key(row) != original[row["sequence_id"]] for row in pools) > 0.9 * len(pools)


def test_a_changed_extra_pools_rebuilds(tmp_path):
    _, _, stats = _build(tmp_path, "d")
    sequences, _, rebuilt = _build(tmp_path, "d", extra_pools=3)
    assert stats["extra_pools"] == 10 and rebuilt["extra_pools"] == rebuilt["config"]["extra_pools"] == 3
    assert len(sequences["valid_pools"]) == 3 * len(sequences["valid"])
    assert set(sequences["valid_pools"]["pool"]) == {1, 2, 3}


def test_sample_extra_pools_draws_rule_7_pools_and_keeps_its_error():
    interacted = np.array([0, 2, 3, 7])
    rng, reference = np.random.default_rng(5), np.random.default_rng(5)
    pools = sample_extra_pools(3, interacted, 10, 4, 6, rng)
    assert pools == [sample_candidates(3, interacted, 10, 4, reference) for _ in range(6)]
    assert sample_extra_pools(3, interacted, 10, 4, 0, rng) == []
    with pytest.raises(ValueError, match="never-interacted items.*--num-candidates"):
        sample_extra_pools(3, interacted, 7, 5, 2, rng)


def test_extra_pools_validation_and_cli_flag(tmp_path, capsys):
    paths = _write_log(tmp_path)
    with pytest.raises(ValueError, match=r"--extra-pools must be >= 0"):
        BuildConfig(format="recbole", interactions=paths["interactions"], extra_pools=-1)
    argv = ["build", "--format", "recbole", "--interactions", paths["interactions"], "--out", str(tmp_path / "o"),
            "--min-item-interactions", "1", "--min-sequence-length", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--extra-pools", "-1"])
    assert exit_info.value.code == 2 and "argument --extra-pools: must be >= 0, got -1" in capsys.readouterr().err
    assert main(argv + ["--extra-pools", "2"]) == 0
    sequences, _, stats = load_built_dataset(tmp_path / "o")
    assert stats["config"]["extra_pools"] == 2 and len(sequences["test_pools"]) == 2 * len(sequences["test"])
