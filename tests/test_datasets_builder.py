"""datasets_builder: readers, the paper's data rules 1-7, PPT samples, the build's atomic/resumable output, the CLI."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import datasets_builder
from datasets_builder import BuildConfig, build_dataset, load_built_dataset
from datasets_builder.__main__ import main
from datasets_builder.readers import read_interactions, read_item_metadata
from datasets_builder.sequencing import make_sessions, ppt_label, sample_candidates, sample_ppt, split_sequences

MIDNIGHT = 1614643200  # 2021-03-02 00:00:00 UTC
HOUR, DAY = 3600, 86400
SMALL = {"min_item_interactions": 3, "min_sequence_length": 4, "num_candidates": 4}


def _world():
    """Interactions `(user, item, seconds)` in file order, item titles and which items have images.

    12 regular users with 5 items each out of i0..i9 (every item 6 times); `u_midnight` has a session whose last two
    items are one second apart across midnight, then 3 days later a 2-item session (dropped by the sequence filter);
    `u_two` has only two items; `i_rare` appears once (item filter); one exact duplicate row; i7 has no metadata.
    """
    rows = []
    for user in range(12):
        for step in range(5):
            rows.append((f"u{user:02d}", f"i{(3 * user + step) % 10}", MIDNIGHT - 30 * DAY + user * DAY + step * HOUR))
    rows.append(("u00", "i_rare", MIDNIGHT - 30 * DAY + 5 * HOUR))
    rows.append(rows[7])  # exact duplicate of a u01 row
    midnight = [MIDNIGHT - 3 * HOUR, MIDNIGHT - 2 * HOUR, MIDNIGHT - HOUR, MIDNIGHT - 1, MIDNIGHT]
    rows += [("u_midnight", f"i{k}", t) for k, t in zip((0, 2, 4, 6, 8), midnight)]
    rows += [("u_midnight", "i1", MIDNIGHT + 3 * DAY), ("u_midnight", "i3", MIDNIGHT + 3 * DAY + HOUR)]
    rows += [("u_two", "i5", MIDNIGHT), ("u_two", "i9", MIDNIGHT + HOUR)]
    titles = {f"i{k}": f"Item number {k}" for k in range(10) if k != 7}
    titles["i_rare"] = "Rare item"
    return rows, titles


def _write_amazon2018(folder: Path, bad_line: str | None = None) -> dict:
    rows, titles = _world()
    lines = [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}) for u, i, t in rows]
    if bad_line is not None:
        lines.insert(2, bad_line)
    with gzip.open(folder / "reviews.json.gz", "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    meta = []
    for item, title in titles.items():
        record = {"asin": item, "title": title, "imageURLHighRes": [f"https://img.example/{item}.jpg"]}
        meta.append(repr(record) if item == "i1" else json.dumps(record))  # one python-literal line, as in 2018
    (folder / "meta.json").write_text("\n".join(meta) + "\n")
    return {"format": "amazon2018", "interactions": str(folder / "reviews.json.gz"),
            "metadata": str(folder / "meta.json")}


def _write_amazon2023(folder: Path) -> dict:
    rows, titles = _world()
    lines = [json.dumps({"user_id": u, "parent_asin": i, "asin": "x", "timestamp": t * 1000}) for u, i, t in rows]
    (folder / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    meta = [
        json.dumps({"parent_asin": item, "title": title, "images": [{"thumb": "t", "large": f"https://i/{item}.jpg"}]})
        for item, title in titles.items()
    ]
    (folder / "meta.jsonl").write_text("\n".join(meta) + "\n")
    return {"format": "amazon2023", "interactions": str(folder / "reviews.jsonl"),
            "metadata": str(folder / "meta.jsonl")}


def _write_recbole(folder: Path) -> dict:
    rows, titles = _world()
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [f"{u}\t{i}\t4\t{t}" for u, i, t in rows]
    (folder / "toy.inter").write_text("\n".join(inter) + "\n")
    items = ["item_id:token\ttitle:token_seq\tyear:token"] + [f"{i}\t{t}\t2001" for i, t in titles.items()]
    (folder / "toy.item").write_text("\n".join(items) + "\n")
    return {"format": "recbole", "interactions": str(folder / "toy.inter"), "metadata": str(folder / "toy.item")}


def _write_images(folder: Path) -> Path:
    from PIL import Image

    images = folder / "images"
    images.mkdir()
    for k in range(10):
        if k == 5:
            continue  # missing image
        if k == 6:
            (images / f"i{k}.jpg").write_bytes(b"not a jpeg")  # unreadable: found here, marked absent by features
            continue
        Image.new("RGB", (8, 8), (25 * k, 0, 0)).save(images / f"i{k}.jpg")
    return images


def _rows(dataset_dict) -> dict:
    return {name: split.to_dict() for name, split in dataset_dict.items()}


# --- readers -------------------------------------------------------------------------------------------------


def test_amazon2018_reader_gzip_and_python_literal_metadata(tmp_path):
    paths = _write_amazon2018(tmp_path)
    log = read_interactions(paths["interactions"], "amazon2018")
    assert len(log.users) == len(_world()[0]) and log.bad_lines == 0
    records, bad = read_item_metadata(paths["metadata"], "amazon2018", wanted=set(log.item_ids))
    assert bad == 0 and records["i1"].title == "Item number 1"  # the python-literal line
    assert records["i2"].image_url == "https://img.example/i2.jpg" and "i7" not in records


def test_amazon2023_reader_converts_milliseconds(tmp_path):
    paths = _write_amazon2023(tmp_path)
    log = read_interactions(paths["interactions"], "amazon2023")
    assert log.timestamps[0] == _world()[0][0][2]
    records, _ = read_item_metadata(paths["metadata"], "amazon2023", wanted={"i3"})
    assert list(records) == ["i3"] and records["i3"].image_url == "https://i/i3.jpg"


def test_recbole_reader_typed_header_and_missing_field(tmp_path):
    paths = _write_recbole(tmp_path)
    log = read_interactions(paths["interactions"], "recbole")
    assert log.user_ids[0] == "u00" and len(log.users) == len(_world()[0])
    records, _ = read_item_metadata(paths["metadata"], "recbole", wanted={"i3"}, text_fields=("year",))
    assert records["i3"].title == "Item number 3" and records["i3"].fields == {"year": "2001"}
    with pytest.raises(ValueError, match=r"toy.inter: required field 'when' \(time\).*--time-field"):
        read_interactions(paths["interactions"], "recbole", time_field="when")


def test_bad_line_fails_with_file_and_line_or_is_skipped_and_counted(tmp_path):
    paths = _write_amazon2018(tmp_path, bad_line='{"reviewerID": "u99", "asin": ')
    with pytest.raises(ValueError, match=r"reviews\.json\.gz:3: not a JSON object"):
        read_interactions(paths["interactions"], "amazon2018")
    log = read_interactions(paths["interactions"], "amazon2018", skip_bad_lines=True)
    assert log.bad_lines == 1 and len(log.users) == len(_world()[0])
    stats = build_dataset(BuildConfig(**paths, skip_bad_lines=True, **SMALL), tmp_path / "d")
    assert stats["bad_lines_skipped"] == {"interactions": 1, "metadata": 0} and stats["lines_read"] == 72


def test_missing_required_field_names_field_and_file(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text(json.dumps({"reviewerID": "u", "asin": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"reviews\.jsonl:1: missing required field 'unixReviewTime'"):
        read_interactions(str(path), "amazon2018")
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\n")
    with pytest.raises(ValueError, match=r"bad\.inter:2: expected 3 tab-separated columns"):
        read_interactions(str(bad), "recbole")


# --- sequencing rules ----------------------------------------------------------------------------------------


def _sessions(rows, **kwargs):
    users = {u: k for k, u in enumerate(dict.fromkeys(r[0] for r in rows))}
    items = {i: k for k, i in enumerate(dict.fromkeys(r[1] for r in rows))}
    arrays = (
        np.array([users[r[0]] for r in rows]),
        np.array([items[r[1]] for r in rows]),
        np.array([float(r[2]) for r in rows]),
    )
    return make_sessions(*arrays, **kwargs), list(items)


def test_session_split_at_the_window_boundary_and_across_midnight():
    base = MIDNIGHT - 1
    rows = [("u", "a", base), ("u", "b", base + 1)]  # 23:59:59 -> 00:00:00: one second apart, same session
    rows += [("u", "c", base + 1 + DAY)]  # gap exactly session_gap: same session
    rows += [("u", "d", base + 1 + 2 * DAY + 1)]  # gap session_gap + 1: new session
    sessions, names = _sessions(rows, min_item_interactions=1, min_sequence_length=1, session_gap=DAY)
    assert [[names[i] for i in sessions.sequence(s)] for s in range(len(sessions))] == [["a", "b", "c"], ["d"]]
    sessions, _ = _sessions(rows, min_item_interactions=1, min_sequence_length=1, session_gap=None)
    assert len(sessions) == 1 and len(sessions.sequence(0)) == 4


def test_duplicates_dropped_and_ties_kept_in_file_order():
    rows = [("u", "b", 5), ("u", "a", 5), ("u", "b", 5), ("u", "c", 1)]
    sessions, names = _sessions(rows, min_item_interactions=1, min_sequence_length=1)
    assert sessions.counts["duplicates_dropped"] == 1
    assert [names[i] for i in sessions.sequence(0)] == ["c", "b", "a"]


def test_item_filter_is_applied_once_not_to_a_k_core():
    # "x" has exactly 2 interactions (kept at min 2) even though one of them sits in a sequence the
    # sequence filter removes; "y" has 1 (removed)
    rows = [("u1", "x", 1), ("u1", "z", 2), ("u1", "z", 3), ("u1", "y", 4), ("u2", "x", 1)]
    sessions, names = _sessions(rows, min_item_interactions=2, min_sequence_length=2)
    assert sessions.counts["removed_by_item_filter"] == {"interactions": 1, "items": 1}
    assert sessions.counts["removed_by_sequence_filter"] == {"sequences": 1, "interactions": 1}
    assert [names[i] for i in sessions.sequence(0)] == ["x", "z", "z"]


def test_sequence_filter_keeps_min_length_and_drops_shorter():
    rows = [("u1", f"i{k}", k) for k in range(9)] + [("u2", f"i{k}", k) for k in range(8)]
    sessions, _ = _sessions(rows, min_item_interactions=1, min_sequence_length=9)
    assert len(sessions) == 1 and sessions.counts["removed_by_sequence_filter"]["sequences"] == 1


def test_empty_after_filter_says_which_filter_and_what_value_keeps_data():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)]
    with pytest.raises(ValueError, match=r"item filter \(--min-item-interactions 8\).*use --min-item-interactions 2"):
        _sessions(rows)
    with pytest.raises(ValueError, match=r"sequence filter \(--min-sequence-length 9\).*--min-sequence-length 2 or"):
        _sessions(rows, min_item_interactions=1)


def test_split_ratios_are_7_2_1_and_seeded():
    splits = split_sequences(1000, np.random.default_rng(0))
    assert {name: len(ix) for name, ix in splits.items()} == {"train": 700, "valid": 200, "test": 100}
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(1000))
    again = split_sequences(1000, np.random.default_rng(0))
    assert all((splits[name] == again[name]).all() for name in splits)


def test_candidates_exclude_interacted_items_and_hold_the_target():
    rng = np.random.default_rng(1)
    interacted = np.array([0, 2, 3, 7])
    for _ in range(200):
        candidates, label = sample_candidates(3, interacted, 10, 5, rng)
        assert candidates[label] == 3 and len(set(candidates)) == 5
        assert not set(candidates) - {3} & set(interacted.tolist())
    with pytest.raises(ValueError, match="--num-candidates"):
        sample_candidates(3, interacted, 7, 5, rng)


def test_ppt_label_rule_eq14():
    assert ppt_label([0, 1, 3]) == "yes"  # |0-1| = 1 <= |1-3| = 2
    assert ppt_label([0, 3, 4]) == "no"  # 3 > 1
    assert ppt_label([4, 2, 0]) == "yes"  # equal distances -> yes
    assert ppt_label([5, 0, 1]) == "no"
    assert sample_ppt([1, 1, 2, 2], np.random.default_rng(0)) is None  # fewer than 3 distinct items
    rng = np.random.default_rng(0)
    history = [4, 4, 9, 1, 4, 7]
    for _ in range(50):
        positions, label = sample_ppt(history, rng)
        assert len({history[p] for p in positions}) == 3 and label == ppt_label(positions)


# --- the build -----------------------------------------------------------------------------------------------


@pytest.fixture
def ds_builder_amazon2018(tmp_path):
    paths = _write_amazon2018(tmp_path)
    config = BuildConfig(**paths, image_dir=str(_write_images(tmp_path)), **SMALL)
    out = tmp_path / "data"
    stats = build_dataset(config, out)
    return config, out, stats


def test_build_output_contract_and_counts(ds_builder_amazon2018):
    config, out, stats = ds_builder_amazon2018
    sequences, items, loaded_stats = load_built_dataset(out)
    assert loaded_stats == stats
    assert set(sequences) == {"train", "valid", "test", "ppt_train", "ppt_valid", "valid_pools", "test_pools"}
    assert items["item_index"] == list(range(len(items))) and set(items["item_id"]) == {f"i{k}" for k in range(10)}
    row = items[items["item_id"].index("i7")]
    assert row["has_text"] is False and row["text"] == "" and stats["items_missing_metadata"] == 1
    assert not items[items["item_id"].index("i5")]["has_image"] and items[items["item_id"].index("i6")]["has_image"]
    assert stats["items_missing_image"] == 1
    assert stats["duplicates_dropped"] == 1
    assert stats["removed_by_item_filter"] == {"interactions": 1, "items": 1}  # i_rare
    assert stats["removed_by_sequence_filter"] == {"sequences": 2, "interactions": 4}  # u_two, u_midnight's 2nd
    assert stats["sequences"] == 13 and stats["interactions"] == 65 and stats["avg_sequence_length"] == 5.0
    assert stats["split_sizes"] == {"train": 9, "valid": 3, "test": 1}
    assert (out / "image_urls.tsv").read_text().startswith("item_index\titem_id\timage_url\n")
    for name in ("train", "valid", "test"):
        for row in sequences[name]:
            assert row["candidates"][row["label"]] == row["target"] and len(row["candidates"]) == 4
    rows = [row for name in ("train", "valid", "test") for row in sequences[name]]
    midnight = [row for row in rows if row["user_id"] == "u_midnight"]
    assert len(midnight) == 1 and len(midnight[0]["history"]) == 4  # the pair across midnight stayed together


def test_no_candidate_is_an_item_the_user_interacted_with_anywhere(ds_builder_amazon2018):
    _, out, _ = ds_builder_amazon2018
    sequences, items, _ = load_built_dataset(out)
    index = {item_id: k for k, item_id in enumerate(items["item_id"])}
    interacted = {}
    for user, item, _ in _world()[0]:
        if item in index:
            interacted.setdefault(user, set()).add(index[item])
    for name in ("train", "valid", "test"):
        for row in sequences[name]:
            negatives = set(row["candidates"]) - {row["target"]}
            assert not negatives & interacted[row["user_id"]], (row, interacted[row["user_id"]])
    # u_midnight's dropped session (i1, i3) counts as interacted
    row = next(r for n in ("train", "valid", "test") for r in sequences[n] if r["user_id"] == "u_midnight")
    assert not {index["i1"], index["i3"]} & set(row["candidates"])


def test_ppt_samples_follow_eq14_on_stored_histories(ds_builder_amazon2018):
    _, out, stats = ds_builder_amazon2018
    sequences, _, _ = load_built_dataset(out)
    assert stats["ppt_counts"]["ppt_train"]["samples"] == len(sequences["ppt_train"]) == len(sequences["train"])
    for row in sequences["ppt_train"]:
        a, b, c = row["ppt_positions"]
        assert len({row["history"][p] for p in (a, b, c)}) == 3
        assert row["ppt_label"] == ("yes" if abs(a - b) <= abs(b - c) else "no")


def test_three_formats_build_the_same_dataset(tmp_path):
    built = []
    for writer in (_write_amazon2018, _write_amazon2023, _write_recbole):
        folder = tmp_path / writer.__name__
        folder.mkdir()
        stats = build_dataset(BuildConfig(**writer(folder), **SMALL), folder / "data")
        sequences, items, _ = load_built_dataset(folder / "data")
        built.append((stats["interactions"], stats["sequences"], items["item_id"], _rows(sequences)))
    assert built[0] == built[1] == built[2]


def test_build_is_deterministic_under_a_seed(tmp_path):
    paths = _write_recbole(tmp_path)
    rows = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_dataset(BuildConfig(**paths, seed=seed, **SMALL), tmp_path / name)
        rows.append(_rows(load_built_dataset(tmp_path / name)[0]))
    assert rows[0] == rows[1] and rows[0] != rows[2]


def test_max_history_and_prefix_augmentation(tmp_path):
    paths = _write_recbole(tmp_path)
    stats = build_dataset(BuildConfig(**paths, max_history=2, augment_prefixes=True, **SMALL), tmp_path / "d")
    sequences, _, _ = load_built_dataset(tmp_path / "d")
    assert max(len(h) for h in sequences["test"]["history"]) == 2 and stats["histories_truncated"] > 0
    # each 5-item train sequence adds one 4-item prefix (min_sequence_length 4)
    assert stats["augmented_train_samples"] == stats["split_sizes"]["train"] - 9 == 9
    assert len(set(sequences["train"]["sequence_id"])) == len(sequences["train"])


def test_rerun_is_skipped_and_a_changed_config_rebuilds(ds_builder_amazon2018, monkeypatch):
    config, out, stats = ds_builder_amazon2018

    def fail(*args, **kwargs):
        raise AssertionError("the reader ran again")

    monkeypatch.setattr(datasets_builder.build, "read_interactions", fail)
    assert build_dataset(config, out) == stats
    monkeypatch.undo()
    changed = BuildConfig(**{**vars(config), "num_candidates": 3})
    assert build_dataset(changed, out)["config"]["num_candidates"] == 3


def test_crash_leaves_no_output_and_keeps_a_previous_build(tmp_path, monkeypatch):
    paths = _write_recbole(tmp_path)

    def crash(self, *args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    out = tmp_path / "fresh"
    with monkeypatch.context() as patch:
        patch.setattr(datasets_builder.build.DatasetDict, "save_to_disk", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            build_dataset(BuildConfig(**paths, **SMALL), out)
    assert list(out.iterdir()) == []  # no items/, sequences/, stats.json, nor a temporary folder

    stats = build_dataset(BuildConfig(**paths, **SMALL), out)
    with monkeypatch.context() as patch:
        patch.setattr(datasets_builder.build.DatasetDict, "save_to_disk", crash)
        with pytest.raises(RuntimeError):
            build_dataset(BuildConfig(**paths, seed=9, **SMALL), out)
    assert load_built_dataset(out)[2] == stats and sorted(p.name for p in out.iterdir()) == [
        "items", "sequences", "stats.json"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_into_a_raw_folder_refuses_and_keeps_its_items(tmp_path, capsys):
    """`--out` pointed at the raw folder whose images live in `items/`: refused, naming them; nothing changes."""
    paths = _write_recbole(tmp_path)
    (tmp_path / "items").mkdir()
    (tmp_path / "items" / "i1.jpg").write_bytes(b"a photo")
    before = _tree(tmp_path)
    argv = ["build", "--format", "recbole", "--interactions", paths["interactions"], "--metadata", paths["metadata"],
            "--min-item-interactions", "3", "--min-sequence-length", "4", "--num-candidates", "4"]
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "items") in err and "did not write" in err and "pick another output folder" in err
    assert len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items", "toy.inter", "toy.item"]

    other = tmp_path / "other"  # a stats.json (or sequences) of another tool is refused as well
    other.mkdir()
    (other / "stats.json").write_text('{"accuracy": 0.9}')
    (other / "sequences").write_text("mine")
    with pytest.raises(FileExistsError, match=r"stats\.json.*sequences|sequences.*stats\.json"):
        build_dataset(BuildConfig(**paths, **SMALL), other)
    assert (other / "stats.json").read_text() == '{"accuracy": 0.9}' and (other / "sequences").read_text() == "mine"


def test_rebuild_replaces_its_own_outputs_and_nothing_else(tmp_path, capsys):
    paths = _write_recbole(tmp_path)
    out = tmp_path / "data"
    build_dataset(BuildConfig(**paths, **SMALL), out)
    (out / "notes.txt").write_text("keep me")
    (out / "features").mkdir()
    (out / "features" / "text.safetensors").write_bytes(b"features")
    load_built_dataset(out)[0]["train"].map(lambda row: {"n": len(row["history"])})  # a cache file, as trainers add
    assert any(p.name.startswith("cache-") for p in (out / "sequences" / "train").iterdir())
    stats = build_dataset(BuildConfig(**paths, **{**SMALL, "num_candidates": 3}), out)
    assert stats["config"]["num_candidates"] == 3 and load_built_dataset(out)[2] == stats
    assert (out / "notes.txt").read_text() == "keep me" and (out / "features" / "text.safetensors").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder or note left

    (out / "items" / "cover.jpg").write_bytes(b"a photo the user put there")
    argv = ["build", "--format", "recbole", "--interactions", paths["interactions"], "--out", str(out),
            "--min-item-interactions", "3", "--min-sequence-length", "4", "--num-candidates", "4"]
    assert main(argv) == 2
    assert str(out / "items" / "cover.jpg") in capsys.readouterr().err
    assert (out / "items" / "cover.jpg").is_file() and load_built_dataset(out)[2] == stats


def test_a_write_interrupted_while_moving_outputs_is_finished_by_the_rerun(tmp_path, monkeypatch):
    paths = _write_recbole(tmp_path)
    out = tmp_path / "data"
    build_dataset(BuildConfig(**paths, **SMALL), out)
    replace = datasets_builder.build.os.replace

    def crash_on_sequences(source, target):
        if Path(target) == out / "sequences":
            raise KeyboardInterrupt("killed while moving the outputs")
        replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(datasets_builder.build.os, "replace", crash_on_sequences)
        with pytest.raises(KeyboardInterrupt):
            build_dataset(BuildConfig(**paths, seed=7, **SMALL), out)
    assert not (out / "stats.json").exists() and (out / "items").is_dir()  # no output a later step would trust
    stats = build_dataset(BuildConfig(**paths, seed=7, **SMALL), out)  # the new items/ is still recognised
    assert load_built_dataset(out)[2] == stats and stats["config"]["seed"] == 7
    assert sorted(p.name for p in out.iterdir()) == ["items", "sequences", "stats.json"]


def test_truncated_gzip_names_the_file_even_with_skip_bad_lines(tmp_path, capsys):
    paths = _write_amazon2018(tmp_path)
    data = Path(paths["interactions"]).read_bytes()
    Path(paths["interactions"]).write_bytes(data[: len(data) // 2])
    for skip in (False, True):
        with pytest.raises(ValueError, match=r"reviews\.json\.gz: the gzip file is truncated or corrupt.*Download it"):
            read_interactions(paths["interactions"], "amazon2018", skip_bad_lines=skip)
    argv = ["build", "--format", "amazon2018", "--interactions", paths["interactions"], "--skip-bad-lines",
            "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "reviews.json.gz: the gzip file is truncated" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "stats.json").exists()


def test_duplicate_metadata_rows_and_undecodable_bytes_are_counted(tmp_path, caplog):
    paths = _write_amazon2018(tmp_path)
    meta = Path(paths["metadata"])
    meta.write_bytes(meta.read_bytes() + json.dumps({"asin": "i2", "title": "A later i2"}).encode() + b"\n")
    meta.write_bytes(meta.read_bytes().replace(b"Item number 3", b"Item \xff\xfe 3"))
    with gzip.open(paths["interactions"], "rb") as handle:
        reviews = handle.read().replace(b'"u03"', b'"u\xff3"')
    with gzip.open(paths["interactions"], "wb") as handle:
        handle.write(reviews)
    with caplog.at_level("WARNING"):
        stats = build_dataset(BuildConfig(**paths, **SMALL), tmp_path / "d")
    assert stats["metadata_duplicates_dropped"] == 1
    assert stats["undecodable_lines"] == {"interactions": 5, "metadata": 1}
    assert json.loads((tmp_path / "d" / "stats.json").read_text())["metadata_duplicates_dropped"] == 1
    _, items, _ = load_built_dataset(tmp_path / "d")
    assert items["title"][items["item_id"].index("i2")] == "Item number 2"  # the first row wins
    assert "\ufffd" in items["title"][items["item_id"].index("i3")]
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "1 later row(s) of an item already read were dropped" in messages
    assert "5 line(s) hold bytes that are not UTF-8 (first: line 16)" in messages


def test_require_title_drops_items_without_metadata(tmp_path):
    paths = _write_amazon2018(tmp_path)
    config = BuildConfig(**paths, require_title=True, **{**SMALL, "num_candidates": 3})
    stats = build_dataset(config, tmp_path / "d")
    assert stats["items_missing_title"] == 0 and stats["interactions_of_dropped_items"] == 6


def test_load_built_dataset_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="stats.json not found.*python -m datasets_builder"):
        load_built_dataset(tmp_path)


# --- CLI -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--session-gap", "-5"], "argument --session-gap: expected seconds >= 0"),
        (["--min-item-interactions", "0"], "argument --min-item-interactions: must be >= 1, got 0; 1 keeps every"),
        (["--num-candidates", "x"], "argument --num-candidates: expected an integer >= 2"),
        (["--image-pattern", "{asin}.jpg"], "--image-pattern '{asin}.jpg' must use {item_id} or {url_basename}"),
        (["--image-pattern", "same.jpg"], "--image-pattern 'same.jpg' must use {item_id}"),
    ],
)
def test_cli_validation_names_the_flag_and_the_fix(tmp_path, capsys, flags, message):
    paths = _write_recbole(tmp_path)
    argv = ["build", "--format", "recbole", "--interactions", paths["interactions"], "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_missing_file_and_empty_data_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["build", "--format", "amazon2018", "--interactions", str(tmp_path / "nope.json"), "--out", "x"])
    assert "--interactions: no file" in capsys.readouterr().err
    paths = _write_recbole(tmp_path)
    argv = ["build", "--format", "recbole", "--interactions", paths["interactions"], "--out", str(tmp_path / "o")]
    assert main(argv + ["--min-item-interactions", "50"]) == 2
    assert "(--min-item-interactions 50) removed every interaction" in capsys.readouterr().err
    assert main(argv) == 2  # the default --min-sequence-length 9 removes every sequence of this tiny file
    assert "--min-sequence-length 9) removed every sequence" in capsys.readouterr().err


def test_cli_build_with_images_then_movielens_shortcut(tmp_path, capsys):
    paths = _write_amazon2018(tmp_path)
    images = _write_images(tmp_path)
    argv = ["build", "--format", "amazon2018", "--reviews", paths["interactions"], "--metadata", paths["metadata"],
            "--image-dir", str(images), "--out", str(tmp_path / "d"), "--min-item-interactions", "3",
            "--min-sequence-length", "4", "--num-candidates", "4", "--session-gap", "none"]
    assert main(argv) == 0
    assert '"sequences": 13' in capsys.readouterr().out  # one sequence per user; u_two still too short

    assert main(["movielens", "--out", str(tmp_path / "ml"), "--text-encoder", "none", "--id-encoder", "none"]) == 0
    sequences, items, stats = load_built_dataset(tmp_path / "ml")
    assert stats["interactions_read"] == 100_000 and stats["items"] == len(items)
    assert items[0]["text"].startswith(items[0]["title"] + " (") and not any(items["has_image"])
