"""Candidate pools of retrieved negatives, the pools Speeder re-ranks when it recommends from the whole catalogue.

    python -m datasets_builder retrieved-pools DATA_DIR --out POOLS_DIR --num-candidates 20

Every train, valid and test row of a built DATA_DIR gets a new pool: its target plus the `num_candidates - 1` items
that SASRec (trained on DATA_DIR as its ID features were, `features.train_id_sasrec`) scores highest after the row's
stored history, leaving out every item the user has in a stored row; shuffled with `seed`. These are the hard
negatives of full-catalogue recommendation (`recommend(history)` re-ranks SASRec's top K), where the paper's pools
hold random never-interacted items. An item the user had outside the stored windows (the built data keeps the last
`max_history` items of each row) may still be among them.

A train row's negatives are cross-fitted (`cross_fit_folds`, default 5): the train users are split into folds, and
a row is scored by a SASRec trained on the other folds' rows only, so that its pool is as hard as a valid or test
user's, whom SASRec never saw (scored by SASRec trained on every train row, the export's retriever). `0` scores
train rows with that SASRec too, which saw them: its top K then holds their target far more often than a test
user's. `random_negatives` of the negatives are drawn at random from the items left (never the user's), the rest
retrieved. Such a pool holds an odd one out, the target, the only item the retriever scores low unless it found the
target; `top_k_pools` stores the retriever's top K as it is instead (the pool a re-ranker meets) and drops the rows
whose target it misses. `prefix_min_history` adds a train row per history prefix, retrieved for its own target (the
trainer's `--prefix_min_history` would give a prefix the negatives of another target).

POOLS_DIR is a complete DATA_DIR for the trainer and the baselines (`train_id_sasrec` and the export's SASRec
retriever train on DATA_DIR, where its ID features came from): the new `sequences/` (no extra pools: a retrieved
pool is one per row), and `items/`, `features/`, `image_urls.tsv` copied from DATA_DIR. Its `stats.json` is
DATA_DIR's, whose sequence fingerprint still names the data the ID features were trained on, plus a
`retrieved_pools` record (source, K, seed, folds, random negatives, the retriever's options and test metrics, and
how often the target would have been in the row's retriever's top K). Written atomically; a rerun with the same
settings and source data is skipped.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from modeling_speeder.retrieval_speeder import SpeederSASRecRetriever, top_rows

from .build import (BUILD_MARKER, BUILD_OUTPUTS, POOL_FEATURES, POOL_SPLIT_NAMES, SEQUENCE_FEATURES, SPLIT_NAMES,
                    load_built_dataset, stored_user_items, write_atomically)
from .features import train_id_sasrec
from .sequencing import history_prefixes

logger = logging.getLogger(__name__)

POOLS_OUTPUTS = (*BUILD_OUTPUTS, "features")


def retrieved_pool(scores: torch.Tensor, target: int, user_items: set[int], num_candidates: int,
                   rng: np.random.Generator, random_negatives: int = 0) -> tuple[list[int], int]:
    """The target plus the `num_candidates - 1 - random_negatives` best-scored items outside `user_items` and
    `random_negatives` items drawn from the rest, shuffled.

    Args:
        scores: the retriever's `(num_items,)` scores, indexed by item index.
        target: the row's target item index.
        user_items: the item indices the row's user has in any stored row (the target among them).
    Returns:
        `(candidates, label)`, label = index of the target in candidates.
    """
    allowed = torch.ones(scores.shape[0], dtype=torch.bool)
    allowed[sorted(user_items | {target})] = False
    negatives = top_rows(scores, num_candidates - 1 - random_negatives, allowed)
    if random_negatives:
        allowed[negatives] = False
        rest = np.flatnonzero(allowed.numpy())
        negatives += [int(i) for i in rng.choice(rest, random_negatives, replace=False)]
    candidates = [int(target)] + negatives
    order = rng.permutation(num_candidates)
    return [candidates[k] for k in order], int(np.flatnonzero(order == 0)[0])


def top_k_pool(scores: torch.Tensor, target: int, user_items: set[int], num_candidates: int,
               rng: np.random.Generator) -> tuple[list[int], int] | None:
    """The retriever's `num_candidates` best items outside `user_items` but the target, shuffled, when the target is
    among them (the pool a re-ranker meets); None when it is not.

    Returns:
        `(candidates, label)`, label = index of the target in candidates, or None.
    """
    allowed = torch.ones(scores.shape[0], dtype=torch.bool)
    allowed[sorted(user_items - {target})] = False
    pool = top_rows(scores, num_candidates, allowed)
    if target not in pool:
        return None
    candidates = [pool[k] for k in rng.permutation(num_candidates)]
    return candidates, candidates.index(target)


def with_prefix_rows(rows: dict[str, list], min_history: int) -> dict[str, list]:
    """`rows` (columns of a sequence split) followed by a row per history prefix: history item k becomes the target of
    the k items before it, for every k >= `min_history` (the trainer's `--prefix_min_history`, here retrieved for
    their own targets). Candidates and label are left empty for the pools to fill."""
    out = {column: list(values) for column, values in rows.items()}
    for sequence_id, user, history in zip(rows["sequence_id"], rows["user_id"], rows["history"]):
        for prefix, target in history_prefixes(history, min_history):
            for column, value in (("sequence_id", sequence_id), ("user_id", user), ("history", prefix),
                                  ("target", target), ("candidates", []), ("label", -1)):
                out[column].append(value)
    return out


def write_retrieved_pools(data_dir: str | os.PathLike, out_dir: str | os.PathLike, num_candidates: int = 20,
                          seed: int = 42, batch_size: int = 256, cross_fit_folds: int = 5,
                          random_negatives: int = 0, top_k_pools: bool = False, prefix_min_history: int = 0) -> dict:
    """Write POOLS_DIR = `out_dir` from the built `data_dir` (module docstring). Returns its stats."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if out_dir.resolve() == data_dir.resolve():
        raise ValueError(f"--out {out_dir} is DATA_DIR itself: write the retrieved pools to a new folder.")
    sequences, items, stats = load_built_dataset(data_dir)
    if not (data_dir / "features").is_dir():
        raise FileNotFoundError(f"{data_dir / 'features'} not found: run `python -m datasets_builder features "
                                f"{data_dir}` first (the pools are for a model that reads its features).")
    num_items = len(items)
    user_items = stored_user_items(sequences)
    most = max((len(items_of_user) for items_of_user in user_items.values()), default=0)
    if not 2 <= num_candidates <= num_items - most + 1:
        raise ValueError(f"--num-candidates must be between 2 and {num_items - most + 1} (the {num_items} items less "
                         f"the {most} that one user has in the stored rows, plus the target), got {num_candidates}.")
    if not 0 <= random_negatives <= num_candidates - 1:
        raise ValueError(f"--random-negatives must be between 0 and {num_candidates - 1} (the pool's negatives), got "
                         f"{random_negatives}.")
    if top_k_pools and random_negatives:
        raise ValueError("--top-k-pools keeps the retriever's top K as they are: it takes no --random-negatives.")
    if prefix_min_history < 0:
        raise ValueError(f"--prefix-min-history must be >= 0 (0 = off), got {prefix_min_history}.")
    train_users = sorted({str(user) for user in sequences["train"]["user_id"]})
    if cross_fit_folds == 1 or not 0 <= cross_fit_folds <= len(train_users):
        raise ValueError(f"--cross-fit-folds must be 0 (no cross-fitting) or between 2 and {len(train_users)} (the "
                         f"train users), got {cross_fit_folds}.")
    source_fingerprint = (stats.get("fingerprints") or {}).get("sequences")
    record = {"source": str(data_dir.resolve()), "source_fingerprint": source_fingerprint,
              "num_candidates": num_candidates, "seed": seed, "cross_fit_folds": cross_fit_folds,
              "random_negatives": random_negatives, "top_k_pools": top_k_pools,
              "prefix_min_history": prefix_min_history}
    previous = _stats(out_dir)
    if previous and {k: previous.get("retrieved_pools", {}).get(k) for k in record} == record:
        logger.info("%s already holds these retrieved pools: skipped.", out_dir)
        return previous

    item_ids = [str(item_id) for item_id in items["item_id"]]  # row = item_index
    result, sasrec_seed, options = train_id_sasrec(data_dir)
    retriever = SpeederSASRecRetriever.from_sasrec(result.model.cpu(), item_ids).eval()
    split_rows = {name: sequences[name].to_dict() for name in SPLIT_NAMES}
    if prefix_min_history:
        split_rows["train"] = with_prefix_rows(split_rows["train"], prefix_min_history)
    # (retriever, the split's row indices it scores) per split; train rows by their fold's retriever
    scorers = {name: [(retriever, range(len(split_rows[name]["history"])))] for name in SPLIT_NAMES}
    if cross_fit_folds:
        scorers["train"] = []
        folds = zip(user_folds(sequences["train"]["user_id"], cross_fit_folds, seed),
                    user_folds(split_rows["train"]["user_id"], cross_fit_folds, seed))  # the same users' folds
        for stored, scored in tqdm(list(folds), desc="cross-fitted SASRec"):
            held_out = set(stored)
            others = [i for i in range(len(sequences["train"])) if i not in held_out]
            fold_result, _, _ = train_id_sasrec(data_dir, train_rows=others)
            scorers["train"].append((SpeederSASRecRetriever.from_sasrec(fold_result.model.cpu(), item_ids).eval(),
                                     scored))
    rng = np.random.default_rng(seed)
    splits, in_top_k, kept = {}, {}, {}
    for name in SPLIT_NAMES:
        rows = split_rows[name]
        candidates, labels, hits = [None] * len(rows["history"]), [None] * len(rows["history"]), 0
        for split_retriever, indices in scorers[name]:
            for start in tqdm(range(0, len(indices), batch_size), desc=f"{name} retrieved pools", leave=False):
                batch = list(indices[start:start + batch_size])
                with torch.no_grad():
                    scores = split_retriever.score([[item_ids[i] for i in rows["history"][row]] for row in batch])
                for row, row_scores in zip(batch, scores):
                    target, user = rows["target"][row], str(rows["user_id"][row])
                    if top_k_pools:
                        candidates[row], labels[row] = top_k_pool(row_scores, target, user_items[user],
                                                                  num_candidates, rng) or (None, None)
                    else:
                        candidates[row], labels[row] = retrieved_pool(row_scores, target, user_items[user],
                                                                      num_candidates, rng, random_negatives)
                    allowed = torch.ones(num_items, dtype=torch.bool)
                    allowed[rows["history"][row]] = False
                    hits += target in top_rows(row_scores, num_candidates, allowed)
        rows["candidates"], rows["label"] = candidates, labels
        keep = [row for row, pool in enumerate(candidates) if pool is not None]
        if not keep:
            raise ValueError(f"--top-k-pools kept no {name} row: the retriever's top {num_candidates} never holds the "
                             "target. Raise --num-candidates.")
        rows = {column: [values[row] for row in keep] for column, values in rows.items()}
        splits[name] = Dataset.from_dict(rows, features=SEQUENCE_FEATURES)
        in_top_k[name] = round(hits / max(1, len(candidates)), 4)
        kept[name] = len(keep)
    for name in POOL_SPLIT_NAMES:
        splits[name] = Dataset.from_dict({column: [] for column in POOL_FEATURES}, features=POOL_FEATURES)
    for name in sequences:
        splits.setdefault(name, sequences[name])  # the PPT samples, unchanged

    record |= {"retriever": {"model": "sasrec", "seed": sasrec_seed, "options": options,
                             "test_metrics": result.test_metrics},
               "target_in_retriever_top_k": in_top_k, "rows": kept}
    stats = {**stats, "extra_pools": 0, "pool_split_sizes": {name: 0 for name in POOL_SPLIT_NAMES},
             "split_sizes": kept, "retrieved_pools": record}
    stats["config"] = {**stats.get("config", {}), "num_candidates": num_candidates, "extra_pools": 0}
    dataset = DatasetDict(splits)

    def write(tmp: Path):
        dataset.save_to_disk(str(tmp / "sequences"), num_shards={name: 1 for name in dataset})  # 1: empty splits load
        items.save_to_disk(str(tmp / "items"))
        shutil.copytree(data_dir / "features", tmp / "features")
        if (data_dir / "image_urls.tsv").is_file():
            shutil.copyfile(data_dir / "image_urls.tsv", tmp / "image_urls.tsv")
        (tmp / BUILD_MARKER).write_text(json.dumps(stats, indent=2) + "\n")

    write_atomically(out_dir, write, list(POOLS_OUTPUTS), marker=BUILD_MARKER)
    logger.info("Wrote %s: %s rows with pools of %d retrieved by SASRec.", out_dir, kept, num_candidates)
    return stats


def user_folds(user_ids: list, num_folds: int, seed: int) -> list[list[int]]:
    """The row indices of `user_ids` in `num_folds` folds of users (a user's rows stay together), seeded."""
    users = sorted({str(user) for user in user_ids})
    fold_of = {users[k]: position % num_folds
               for position, k in enumerate(np.random.default_rng(seed).permutation(len(users)))}
    folds = [[] for _ in range(num_folds)]
    for row, user in enumerate(user_ids):
        folds[fold_of[str(user)]].append(row)
    return folds


def _stats(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return None
