"""Raw files to DATA_DIR: the item table, the sequence splits with stored candidate pools and PPT samples, stats.json.

DATA_DIR layout (the contract the trainer, the model and the baselines read):
    items/       `Dataset` ordered by `item_index`: item_index, item_id, title, text, image_path, has_text, has_image
    sequences/   `DatasetDict`: train / valid / test (sequence_id, user_id, history, target, candidates, label) and
                 ppt_train / ppt_valid (sequence_id, user_id, history, ppt_positions, ppt_label) and
                 valid_pools / test_pools (the valid / test columns plus `pool`, 1..K: K = `extra_pools` more seeded
                 pools of each valid / test sequence, in row order; empty when K = 0)
    stats.json   Table 1 columns, what every rule removed, split sizes, PPT counts, the build config, fingerprints
    image_urls.tsv  item_index, item_id, image URL from the metadata (only when the metadata has URLs)
    features/    {text,vision,id}.safetensors + .json manifests, written by the feature step (features.py)

Items in the interactions but not in the metadata are kept with no text (`has_text` False) and counted in
`items_missing_metadata`; `--require-title` / `--require-image` drop items without them instead (the paper's choice).
The build is atomic: everything is written to a temporary folder in DATA_DIR and moved into place at the end, with
stats.json last; a rerun with the same config and unchanged inputs is skipped. It replaces only its own earlier
outputs: a DATA_DIR whose `items/`, `sequences/`, `image_urls.tsv` or `stats.json` were not written by a build is
refused, naming them (other files in DATA_DIR are never touched).
"""

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk
from tqdm.auto import tqdm

from modeling_speeder.configuration_speeder import SpeederConfig

from .readers import (
    FORMATS,
    compose_item_text,
    read_interactions,
    read_item_metadata,
    template_fields,
)
from .sequencing import (
    POOL_SPLIT_NAMES,
    SPLIT_NAMES,
    make_sessions,
    sample_candidates,
    sample_extra_pools,
    sample_ppt,
    split_sequences,
)

logger = logging.getLogger(__name__)

DEFAULT_ENCODERS = {"text": "all-MiniLM-L6-v2", "vision": "efficientnet-lite0", "id": "sasrec"}
BUILD_OUTPUTS = ("items", "sequences", "image_urls.tsv")  # what a build writes into DATA_DIR, besides BUILD_MARKER
BUILD_MARKER = "stats.json"
# Files a folder this package wrote may hold: Arrow tables with their JSON state (`save_to_disk`, and the cache files
# a later `map` adds), generated PNG images and (retrieved pools' copy of) feature files; `tmp*` files are what an
# interrupted `map` leaves.
OUTPUT_FILE_SUFFIXES = (".arrow", ".json", ".png", ".safetensors")
BUILD_VERSION = 2  # bump when the build's output changes for the same config, so old outputs are rebuilt
ITEM_FEATURES = Features(
    {
        "item_index": Value("int64"),
        "item_id": Value("string"),
        "title": Value("string"),
        "text": Value("string"),
        "image_path": Value("string"),
        "has_text": Value("bool"),
        "has_image": Value("bool"),
    }
)
SEQUENCE_FEATURES = Features(
    {
        "sequence_id": Value("int64"),
        "user_id": Value("string"),
        "history": List(Value("int64")),
        "target": Value("int64"),
        "candidates": List(Value("int64")),
        "label": Value("int64"),
    }
)
POOL_FEATURES = Features({**SEQUENCE_FEATURES, "pool": Value("int64")})
PPT_FEATURES = Features(
    {
        "sequence_id": Value("int64"),
        "user_id": Value("string"),
        "history": List(Value("int64")),
        "ppt_positions": List(Value("int64")),
        "ppt_label": Value("string"),
    }
)


@dataclasses.dataclass
class BuildConfig:
    """Everything that determines a build's output (recorded in stats.json; a rerun compares it).

    Args:
        format: `amazon2018`, `amazon2023` or `recbole`.
        interactions: reviews JSON lines (plain or .gz) or a RecBole `.inter` file.
        metadata: item metadata JSON lines or a RecBole `.item` file; None = no titles.
        image_dir / image_pattern: an item's image is `image_dir/image_pattern`, formatted with `item_id` and
            `url_basename` (the file name of the metadata's image URL); downloading the images is the user's step.
        text_fields: extra metadata fields appended to the title in the item text.
        text_template: optional format string for the item text, e.g. `"{title} ({release_year}), {class}"`.
        session_gap: seconds; a longer gap starts a new sequence; None = one sequence per user.
        num_candidates: m, the candidate pool size (target + m - 1 never-interacted items).
        extra_pools: K, the seeded pools stored per valid / test sequence besides the paper's one
            (`valid_pools` / `test_pools`); 0 stores none.
    """

    format: str
    interactions: str
    metadata: str | None = None
    image_dir: str | None = None
    image_pattern: str = "{item_id}.jpg"
    text_fields: tuple[str, ...] = ()
    text_template: str | None = None
    title_field: str | None = None
    user_field: str = "user_id"
    item_field: str = "item_id"
    time_field: str = "timestamp"
    timestamp_unit: str | None = None
    min_item_interactions: int = 8
    session_gap: float | None = 86400.0
    min_sequence_length: int = 9
    max_history: int = SpeederConfig.max_history_length  # the model's position table: one source
    num_candidates: int = 5
    extra_pools: int = 10
    augment_prefixes: bool = False
    require_title: bool = False
    require_image: bool = False
    skip_bad_lines: bool = False
    seed: int = 42

    def __post_init__(self):
        self.interactions = os.path.abspath(self.interactions)
        self.metadata = os.path.abspath(self.metadata) if self.metadata else None
        self.image_dir = os.path.abspath(self.image_dir) if self.image_dir else None
        self.text_fields = tuple(self.text_fields)
        if self.text_template is not None:
            self.text_fields = tuple(dict.fromkeys(self.text_fields + template_fields(self.text_template)))
        checks = [
            (self.format in FORMATS, f"--format must be one of {list(FORMATS)}, got {self.format!r}"),
            (self.min_item_interactions >= 1, "--min-item-interactions must be >= 1 (1 keeps every item)"),
            (self.min_sequence_length >= 2, "--min-sequence-length must be >= 2 (a target needs a history)"),
            (self.session_gap is None or self.session_gap >= 0, "--session-gap must be >= 0 seconds or 'none'"),
            (self.max_history >= 1, "--max-history must be >= 1"),
            (self.num_candidates >= 2, "--num-candidates must be >= 2 (the target plus at least one negative)"),
            (self.extra_pools >= 0, "--extra-pools must be >= 0 (0 stores only the paper's one pool per sequence)"),
            (self.timestamp_unit in (None, "s", "ms"), "--timestamp-unit must be 's' or 'ms'"),
            (os.path.isfile(self.interactions), f"--interactions: no file {self.interactions}"),
            (self.metadata is None or os.path.isfile(self.metadata), f"--metadata: no file {self.metadata}"),
            (self.image_dir is None or os.path.isdir(self.image_dir), f"--image-dir: no folder {self.image_dir}"),
            (not self.require_image or self.image_dir, "--require-image needs --image-dir"),
            (not self.require_title or self.metadata, "--require-title needs --metadata"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        try:
            distinct = self.image_pattern.format(item_id="x", url_basename="y") != self.image_pattern
        except (KeyError, IndexError, ValueError):
            distinct = False
        if not distinct:
            raise ValueError(
                f"--image-pattern {self.image_pattern!r} must use {{item_id}} or {{url_basename}} and no other "
                "field, e.g. '{item_id}.jpg'."
            )


def _input_fingerprint(config: BuildConfig) -> dict:
    """Size and modification time of each input (and of the image folder, which changes when images are added)."""
    out = {}
    for path in (config.interactions, config.metadata, config.image_dir):
        if path:
            stat = os.stat(path)
            out[path] = {"size": stat.st_size if os.path.isfile(path) else None, "mtime_ns": stat.st_mtime_ns}
    return out


def _config_record(config: BuildConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as stats.json stores them


def is_build_current(config: BuildConfig, out_dir: str | os.PathLike) -> bool:
    """True when `out_dir` holds a finished build of this config from unchanged inputs."""
    out_dir = Path(out_dir)
    try:
        stats = json.loads((out_dir / "stats.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        stats.get("build_version") == BUILD_VERSION
        and stats.get("config") == _config_record(config)
        and stats.get("inputs") == json.loads(json.dumps(_input_fingerprint(config)))
        and (out_dir / "items").is_dir()
        and (out_dir / "sequences").is_dir()
    )


def _image_path(config: BuildConfig, item_id: str, url: str) -> str:
    """Absolute path of the item's image file, or "" when there is none on disk."""
    if not config.image_dir:
        return ""
    url_basename = url.rsplit("/", 1)[-1].split("?", 1)[0] if url else ""
    if "{url_basename}" in config.image_pattern and not url_basename:
        return ""
    path = os.path.join(config.image_dir, config.image_pattern.format(item_id=item_id, url_basename=url_basename))
    return path if os.path.isfile(path) else ""


def _group_sorted(keys: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """`{key: sorted unique values}` for parallel arrays."""
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    return {int(group[0]): np.unique(vals) for group, vals in zip(np.split(keys, bounds), np.split(values, bounds))}


def sequences_fingerprint(splits: dict[str, dict[str, list]], num_items: int) -> str:
    """sha256 of the sequence splits' content (what the ID encoder trains on)."""
    digest = hashlib.sha256(f"items={num_items}".encode())
    for name in sorted(splits):
        digest.update(name.encode())
        for column in sorted(splits[name]):
            values = splits[name][column]
            digest.update(column.encode())
            digest.update(json.dumps(values, separators=(",", ":")).encode())
    return digest.hexdigest()


def build_dataset(config: BuildConfig, out_dir: str | os.PathLike, force: bool = False) -> dict:
    """Read, sequence, split and write DATA_DIR (see the module docstring). Returns the stats dict.

    Skips the work when `out_dir` already holds this build (unless `force`).
    """
    out_dir = Path(out_dir)
    if not force and is_build_current(config, out_dir):
        logger.info("%s already holds this build (same config, unchanged inputs): skipped.", out_dir)
        return json.loads((out_dir / "stats.json").read_text())
    check_output_folder(out_dir, BUILD_OUTPUTS, BUILD_MARKER)  # before the work, not only when writing
    started = time.perf_counter()
    inputs = _input_fingerprint(config)

    log = read_interactions(
        config.interactions,
        config.format,
        skip_bad_lines=config.skip_bad_lines,
        timestamp_unit=config.timestamp_unit,
        user_field=config.user_field,
        item_field=config.item_field,
        time_field=config.time_field,
    )
    interactions_read = len(log.users)
    records, metadata_bad_lines, metadata_counts = {}, 0, {"duplicates_dropped": 0, "undecodable_lines": 0}
    if config.metadata:
        records, metadata_bad_lines = read_item_metadata(
            config.metadata,
            config.format,
            wanted=set(log.item_ids),
            text_fields=config.text_fields,
            skip_bad_lines=config.skip_bad_lines,
            title_field=config.title_field,
            item_field=config.item_field,
            counts=metadata_counts,
        )
    else:
        logger.warning("No --metadata given: items have no title, so no text features.")

    dropped_items = None
    if config.require_title or config.require_image:
        dropped_items = np.zeros(len(log.item_ids), dtype=bool)
        for code, item_id in enumerate(log.item_ids):
            record = records.get(item_id)
            if config.require_title and not (record and record.title):
                dropped_items[code] = True
            elif config.require_image and not _image_path(config, item_id, record.image_url if record else ""):
                dropped_items[code] = True

    sessions = make_sessions(
        log.users,
        log.items,
        log.timestamps,
        min_item_interactions=config.min_item_interactions,
        session_gap=config.session_gap,
        min_sequence_length=config.min_sequence_length,
        dropped_items=dropped_items,
    )

    # item table: the items of the kept sequences, in order of first appearance in the interactions file
    item_codes = np.unique(sessions.items)
    num_items = len(item_codes)
    index_of_code = np.full(len(log.item_ids), -1, dtype=np.int64)
    index_of_code[item_codes] = np.arange(num_items)
    item_rows = {name: [] for name in ITEM_FEATURES}
    urls = []
    for index, code in enumerate(tqdm(item_codes.tolist(), desc="items", leave=False)):
        item_id = log.item_ids[code]
        record = records.get(item_id)
        text = compose_item_text(record, config.text_template)
        image_path = _image_path(config, item_id, record.image_url if record else "")
        urls.append(record.image_url if record else "")
        for name, value in zip(
            ITEM_FEATURES,
            (index, item_id, record.title if record else "", text, image_path, bool(text), bool(image_path)),
        ):
            item_rows[name].append(value)

    # rule 7's exclusion set: every item of the final table the user interacted with anywhere in the cleaned data
    user_codes, cleaned_items = sessions.user_items
    in_table = index_of_code[cleaned_items] >= 0
    interacted = _group_sorted(user_codes[in_table], index_of_code[cleaned_items[in_table]])

    # spawn(4)[:3] == spawn(3): the 4th child (extra pools) leaves the other streams, and so the paper's splits, as is
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    split_rng, candidate_rng, ppt_rng, pool_rng = (np.random.default_rng(seed) for seed in seeds)
    split_index = split_sequences(len(sessions), split_rng)
    sequences = [index_of_code[sessions.sequence(s)] for s in range(len(sessions))]
    samples = {name: [(int(s), int(s), sequences[s]) for s in split_index[name]] for name in SPLIT_NAMES}
    augmented = 0
    if config.augment_prefixes:  # rule 5: every prefix with >= min_sequence_length items is also a train sample
        next_id = len(sessions)
        for s in split_index["train"].tolist():
            for length in range(config.min_sequence_length, len(sequences[s])):
                samples["train"].append((next_id, s, sequences[s][:length]))
                next_id += 1
                augmented += 1

    splits: dict[str, dict[str, list]] = {}
    for name in SPLIT_NAMES:
        rows = {column: [] for column in SEQUENCE_FEATURES}
        for sequence_id, source, sequence in tqdm(samples[name], desc=f"{name} candidates", leave=False):
            user = int(sessions.users[source])
            candidates, label = sample_candidates(
                int(sequence[-1]), interacted[user], num_items, config.num_candidates, candidate_rng
            )
            rows["sequence_id"].append(sequence_id)
            rows["user_id"].append(log.user_ids[user])
            rows["history"].append(sequence[:-1][-config.max_history :].tolist())
            rows["target"].append(int(sequence[-1]))
            rows["candidates"].append(candidates)
            rows["label"].append(label)
        splits[name] = rows
    for name in ("train", "valid"):  # SPAE's PPT: one sample per train/valid row with >= 3 distinct history items
        rows = {column: [] for column in PPT_FEATURES}
        source = splits[name]
        for sequence_id, user_id, history in zip(source["sequence_id"], source["user_id"], source["history"]):
            ppt = sample_ppt(history, ppt_rng)
            if ppt is not None:
                for column, value in zip(PPT_FEATURES, (sequence_id, user_id, history, *ppt)):
                    rows[column].append(value)
        splits[f"ppt_{name}"] = rows
    for name in ("valid", "test"):  # K more pools per valid / test row, in row order, from their own stream
        rows = {column: [] for column in POOL_FEATURES}
        stored = splits[name]
        for k, (_, source, _) in enumerate(tqdm(samples[name], desc=f"{name} extra pools", leave=False)):
            user = int(sessions.users[source])
            pools = sample_extra_pools(
                stored["target"][k], interacted[user], num_items, config.num_candidates, config.extra_pools, pool_rng
            )
            for pool, (candidates, label) in enumerate(pools, start=1):
                row = {column: stored[column][k] for column in SEQUENCE_FEATURES}
                row.update(candidates=candidates, label=label, pool=pool)
                for column, value in row.items():
                    rows[column].append(value)
        splits[f"{name}_pools"] = rows

    interactions = int(sessions.offsets[-1])
    stats = {
        "interactions": interactions,
        "items": num_items,
        "sequences": len(sessions),
        "avg_sequence_length": round(interactions / len(sessions), 4),
        "users": len({int(u) for u in sessions.users}),
        "lines_read": log.lines,
        "interactions_read": interactions_read,
        "bad_lines_skipped": {"interactions": log.bad_lines, "metadata": metadata_bad_lines},
        "undecodable_lines": {"interactions": log.undecodable_lines, "metadata": metadata_counts["undecodable_lines"]},
        "metadata_duplicates_dropped": metadata_counts["duplicates_dropped"],
        **sessions.counts,
        "items_missing_metadata": sum(item_id not in records for item_id in item_rows["item_id"]),
        "items_missing_title": sum(not title for title in item_rows["title"]),
        "items_missing_text": sum(not has for has in item_rows["has_text"]),
        "items_missing_image": sum(not has for has in item_rows["has_image"]),
        "split_sizes": {name: len(splits[name]["sequence_id"]) for name in SPLIT_NAMES},
        "extra_pools": config.extra_pools,
        "pool_split_sizes": {name: len(splits[name]["sequence_id"]) for name in POOL_SPLIT_NAMES},
        "augmented_train_samples": augmented,
        "ppt_counts": {
            name: {
                "samples": len(splits[name]["ppt_label"]),
                "yes": sum(label == "yes" for label in splits[name]["ppt_label"]),
            }
            for name in ("ppt_train", "ppt_valid")
        },
        "histories_truncated": sum(
            len(sequence) - 1 > config.max_history for name in SPLIT_NAMES for _, _, sequence in samples[name]
        ),
        # without the extra pools, which no encoder trains on: a changed --extra-pools keeps the ID features
        "fingerprints": {
            "sequences": sequences_fingerprint(
                {name: rows for name, rows in splits.items() if name not in POOL_SPLIT_NAMES}, num_items
            )
        },
        "config": _config_record(config),
        "inputs": inputs,
        "build_version": BUILD_VERSION,
    }

    features = {name: PPT_FEATURES if name.startswith("ppt_") else SEQUENCE_FEATURES for name in splits}
    features.update({name: POOL_FEATURES for name in POOL_SPLIT_NAMES})
    dataset = DatasetDict({name: Dataset.from_dict(rows, features=features[name]) for name, rows in splits.items()})
    items = Dataset.from_dict(item_rows, features=ITEM_FEATURES)
    url_lines = [f"{index}\t{item}\t{url}\n" for index, (item, url) in enumerate(zip(item_rows["item_id"], urls))]
    url_lines = url_lines if any(urls) else []
    stats["seconds"] = round(time.perf_counter() - started, 2)

    def write(tmp: Path):
        items.save_to_disk(str(tmp / "items"))
        dataset.save_to_disk(str(tmp / "sequences"), num_shards={name: 1 for name in dataset})  # 1: empty splits load
        if url_lines:
            (tmp / "image_urls.tsv").write_text("item_index\titem_id\timage_url\n" + "".join(url_lines))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    write_atomically(out_dir, write, list(BUILD_OUTPUTS), marker=BUILD_MARKER)
    logger.info(
        "Built %s: %d interactions, %d items, %d sequences (avg length %.2f), splits %s.",
        out_dir, interactions, num_items, len(sessions), stats["avg_sequence_length"], stats["split_sizes"],
    )
    return stats


def _is_own_record(path: Path) -> bool:
    """True when `path` is a marker this package wrote: a JSON object with the step's `config`."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "config" in record


def foreign_outputs(out_dir: str | os.PathLike, names, marker: str) -> list[Path]:
    """The paths among `out_dir/names` and `out_dir/marker` that an earlier run of this step did not write.

    An earlier run left its `marker` (or the `.{marker}.partial` note of an interrupted write): a JSON object with the
    step's `config`. Its folders hold only Arrow tables, their JSON state and generated images; any other file in
    them, a link, or any output without the marker is foreign.
    """
    out_dir = Path(out_dir)
    present = [out_dir / name for name in (*names, marker) if os.path.lexists(out_dir / name)]
    owned = _is_own_record(out_dir / marker) or _is_own_record(out_dir / f".{marker}.partial")
    foreign = []
    for path in present:
        if not owned or path.is_symlink() or (path.name == marker and not _is_own_record(path)):
            foreign.append(path)
        elif path.is_dir():
            foreign += [
                file
                for file in sorted(path.rglob("*"))
                if file.is_symlink()
                or (file.is_file() and file.suffix not in OUTPUT_FILE_SUFFIXES and not file.name.startswith("tmp"))
            ]
    return foreign


def check_output_folder(out_dir: str | os.PathLike, names, marker: str):
    """Raise `FileExistsError` naming the files of `out_dir` that writing `names` + `marker` would replace but that
    an earlier run of this step did not write (see `foreign_outputs`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a folder: pick another output folder.")
    foreign = foreign_outputs(out_dir, names, marker)
    if foreign:
        shown = ", ".join(str(path) for path in foreign[:5])
        shown += f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise FileExistsError(
            f"{out_dir} holds files this command did not write: {shown}. It writes {[*names, marker]} there and "
            "would replace them, so nothing was changed: pick another output folder (a new or empty one), or move "
            "these files away."
        )


def write_atomically(out_dir: Path, write, names: list[str], marker: str):
    """Run `write(tmp)` into a temporary folder inside `out_dir`, then move `names` and finally `marker` into place.

    Only the outputs of an earlier run of the same step are replaced: any other file at one of these names is refused
    with a `FileExistsError` naming it (`check_output_folder`), and other files in `out_dir` are never touched. The old
    marker is removed first, so a crash at any point leaves no output a later step would trust (a hidden
    `.{marker}.partial` note keeps the outputs recognisable as this step's); the temporary folder is removed on
    failure (and stale ones from killed runs on the next call).
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, names, marker)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".tmp-{marker}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{marker}-", dir=out_dir))
    partial = out_dir / f".{marker}.partial"
    try:
        write(tmp)
        check_output_folder(out_dir, names, marker)  # again: the folder may have changed while `write` ran
        shutil.copyfile(tmp / marker, partial)
        (out_dir / marker).unlink(missing_ok=True)
        for name in names:
            target, new = out_dir / name, tmp / name
            if os.path.lexists(target):
                os.replace(target, tmp / f"old-{name}")
            if new.exists():
                os.replace(new, target)
        os.replace(tmp / marker, out_dir / marker)
        partial.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_built_dataset(data_dir: str | os.PathLike) -> tuple[DatasetDict, Dataset, dict]:
    """`(sequences DatasetDict, items Dataset, stats dict)` of a built DATA_DIR."""
    data_dir = Path(data_dir)
    for name in ("stats.json", "items", "sequences"):
        if not (data_dir / name).exists():
            raise FileNotFoundError(
                f"{data_dir / name} not found: build the data set first, e.g. `python -m datasets_builder movielens "
                f"--out {data_dir}` or `python -m datasets_builder build --out {data_dir} --format ... "
                "--interactions ...`."
            )
    stats = json.loads((data_dir / "stats.json").read_text())
    return load_from_disk(str(data_dir / "sequences")), load_from_disk(str(data_dir / "items")), stats


def stored_user_items(sequences) -> dict[str, set[int]]:
    """Per user id, every item in a history or target of the stored train, valid and test rows."""
    items: dict[str, set[int]] = {}
    for split in SPLIT_NAMES:
        if split in sequences:
            for user, history, target in zip(sequences[split]["user_id"], sequences[split]["history"],
                                              sequences[split]["target"]):
                items.setdefault(str(user), set()).update(history, [target])
    return items


def pool_size(data_dir: str | os.PathLike) -> int:
    """m, the number of candidates in each stored pool of a built DATA_DIR (its build's `--num-candidates`)."""
    sequences = load_built_dataset(data_dir)[0]
    split = next((sequences[name] for name in ("train", "valid", "test") if len(sequences.get(name, ()))), None)
    if split is None:
        raise ValueError(f"{data_dir} holds no recommendation rows: rebuild it with `python -m datasets_builder`.")
    return len(split[0]["candidates"])


def train_subset(train: Dataset, max_samples: int | None, seed: int) -> Dataset:
    """The first `max_samples` rows of a seeded shuffle of `train` (all of it when None or larger).

    Speeder and the LLaRA-style baseline both take their training samples from here, so they train on the same ones.
    The split is stored in sequence order with augmented prefixes after their sequence, so its head alone would be
    a few users' sessions.
    """
    if max_samples is None or max_samples >= len(train):
        return train
    return train.shuffle(seed=seed).select(range(max_samples))


MOVIELENS_TEXT_TEMPLATE = "{title} ({release_year}), {class}"


def movielens_config(**overrides) -> BuildConfig:
    """The `BuildConfig` of the offline MovieLens-100K (RecBole atomic files inside the `recbole` wheel).

    Item text: title, release year and genres. `overrides` replace any other field (filters, seed, ...).
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("MovieLens-100K ships inside the recbole wheel: pip install --no-deps recbole==1.2.1")
    folder = Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"
    defaults = {
        "format": "recbole",
        "interactions": str(folder / "ml-100k.inter"),
        "metadata": str(folder / "ml-100k.item"),
        "title_field": "movie_title",
        "text_template": MOVIELENS_TEXT_TEMPLATE,
    }
    return BuildConfig(**{**defaults, **overrides})
