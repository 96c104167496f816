"""Interactions to sequences, splits, candidate pools and PPT samples: the paper's data rules 1-7 (arXiv 2511.05885,
"Data"), and SPAE's PPT.

Every function is deterministic given its inputs (and the numpy `Generator` it is handed).
"""

from dataclasses import dataclass

import numpy as np

from modeling_speeder.prompt_speeder import PPT_ANSWERS

SPLIT_NAMES = ("train", "valid", "test")
POOL_SPLIT_NAMES = ("valid_pools", "test_pools")  # extra seeded pools of the valid / test sequences
SPLIT_RATIOS = (0.7, 0.2, 0.1)


@dataclass
class Sessions:
    """Sequences after rules 1-4, as item codes of the input log.

    Attributes:
        users: `int64 [S]` user code of each sequence.
        items: `int64 [total]` item codes of all sequences, concatenated in order.
        offsets: `int64 [S + 1]` sequence `s` is `items[offsets[s]:offsets[s + 1]]`.
        user_items: `(user_codes, item_codes)` of every cleaned interaction (rule 7's "anywhere in the cleaned data").
        counts: what each rule removed.
    """

    users: np.ndarray
    items: np.ndarray
    offsets: np.ndarray
    user_items: tuple[np.ndarray, np.ndarray]
    counts: dict

    def __len__(self) -> int:
        return len(self.users)

    def sequence(self, index: int) -> np.ndarray:
        return self.items[self.offsets[index] : self.offsets[index + 1]]


def make_sessions(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    min_item_interactions: int = 8,
    session_gap: float | None = 86400.0,
    min_sequence_length: int = 9,
    dropped_items: np.ndarray | None = None,
) -> Sessions:
    """Rules 1-4: drop duplicates, order per user, item filter once, sessions by gap, sequence filter once.

    Args:
        users / items / timestamps: `[n]` codes and seconds, in input-file order.
        session_gap: a gap longer than this many seconds starts a new sequence; None keeps one sequence per user.
        dropped_items: optional bool mask over item codes of items dropped before filtering (missing title/image).
    """
    n = len(users)
    if n == 0:
        raise ValueError("No interactions were read: check the input file and --format.")
    position = np.arange(n)
    # 1. exact duplicates of (user, item, timestamp): keep the first occurrence in the file
    order = np.lexsort((position, items, timestamps, users))
    u, i, t = users[order], items[order], timestamps[order]
    duplicate = np.zeros(n, dtype=bool)
    duplicate[1:] = (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])
    kept = order[~duplicate]
    kept = kept[np.lexsort((position[kept], timestamps[kept], users[kept]))]  # per user by (time, file position)
    counts = {"duplicates_dropped": int(duplicate.sum())}
    user_items = (users[kept], items[kept])

    if dropped_items is not None:
        keep = ~dropped_items[items[kept]]
        counts["interactions_of_dropped_items"] = int((~keep).sum())
        kept = kept[keep]
        if len(kept) == 0:
            raise ValueError(
                "Dropping items without a title/image (--require-title / --require-image) removed every "
                "interaction: leave those flags off to keep such items with the modality marked missing."
            )

    # 2. item filter, once
    item_counts = np.bincount(items[kept])
    keep = item_counts[items[kept]] >= min_item_interactions
    counts["removed_by_item_filter"] = {
        "interactions": int((~keep).sum()),
        "items": int(((item_counts > 0) & (item_counts < min_item_interactions)).sum()),
    }
    if not keep.any():
        raise ValueError(
            f"The item filter (--min-item-interactions {min_item_interactions}) removed every interaction: the most "
            f"interactions any item has is {item_counts.max()}; use --min-item-interactions {item_counts.max()} or "
            "lower to keep data."
        )
    kept = kept[keep]
    u, i, t = users[kept], items[kept], timestamps[kept]

    # 3. sessions: a new sequence at each new user, or after a gap longer than session_gap
    start = np.ones(len(kept), dtype=bool)
    start[1:] = u[1:] != u[:-1]
    if session_gap is not None:
        start[1:] |= (t[1:] - t[:-1]) > session_gap
    offsets = np.append(np.flatnonzero(start), len(kept))
    lengths = np.diff(offsets)
    counts["sessions_before_sequence_filter"] = int(len(lengths))

    # 4. sequence filter, once
    keep_sequence = lengths >= min_sequence_length
    counts["removed_by_sequence_filter"] = {
        "sequences": int((~keep_sequence).sum()),
        "interactions": int(lengths[~keep_sequence].sum()),
    }
    if not keep_sequence.any():
        gap_hint = " or a longer --session-gap (or --session-gap none)" if session_gap is not None else ""
        raise ValueError(
            f"The sequence filter (--min-sequence-length {min_sequence_length}) removed every sequence: the longest "
            f"sequence has {lengths.max()} items; use --min-sequence-length {max(int(lengths.max()), 2)} or "
            f"lower{gap_hint} to keep data."
        )
    starts, kept_lengths = offsets[:-1][keep_sequence], lengths[keep_sequence]
    return Sessions(
        users=u[starts],
        items=i[np.repeat(keep_sequence, lengths)],
        offsets=np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int64),
        user_items=user_items,
        counts=counts,
    )


def split_sequences(num_sequences: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rule 6: a seeded shuffle, then 7:2:1 (valid and test get at least one sequence each); indices sorted."""
    if num_sequences < 3:
        raise ValueError(
            f"Only {num_sequences} sequence(s) left after filtering; a train/valid/test split needs at least 3: "
            "lower --min-sequence-length or --min-item-interactions, or use more data."
        )
    num_valid = max(1, round(num_sequences * SPLIT_RATIOS[1]))
    num_test = max(1, round(num_sequences * SPLIT_RATIOS[2]))
    order = rng.permutation(num_sequences)
    bounds = np.cumsum([0, num_sequences - num_valid - num_test, num_valid, num_test])
    return {name: np.sort(order[bounds[k] : bounds[k + 1]]) for k, name in enumerate(SPLIT_NAMES)}


def sample_candidates(
    target: int, interacted: np.ndarray, num_items: int, num_candidates: int, rng: np.random.Generator
) -> tuple[list[int], int]:
    """Rule 7: the target plus `num_candidates - 1` items outside `interacted` (sorted item indices), drawn
    uniformly without replacement, then shuffled. Returns `(candidates, label)`, label = index of the target."""
    needed = num_candidates - 1
    if num_items - len(interacted) < needed:
        raise ValueError(
            f"A user interacted with {len(interacted)} of the {num_items} items, leaving fewer than {needed} "
            f"never-interacted items for the candidate pool: lower --num-candidates."
        )
    if len(interacted) * 2 > num_items:  # dense user: draw from the explicit complement
        negatives = rng.choice(np.setdiff1d(np.arange(num_items), interacted), size=needed, replace=False)
    else:  # rejection sampling, order of first draw kept so the result is uniform without replacement
        negatives = []
        while len(negatives) < needed:
            for item in rng.integers(0, num_items, size=2 * needed + 4).tolist():
                position = np.searchsorted(interacted, item)
                if (position < len(interacted) and interacted[position] == item) or item in negatives:
                    continue
                negatives.append(item)
                if len(negatives) == needed:
                    break
    candidates = [int(target)] + [int(item) for item in negatives]
    order = rng.permutation(num_candidates)
    candidates = [candidates[k] for k in order]
    return candidates, int(np.flatnonzero(order == 0)[0])


def sample_extra_pools(
    target: int, interacted: np.ndarray, num_items: int, num_candidates: int, num_pools: int, rng: np.random.Generator
) -> list[tuple[list[int], int]]:
    """`num_pools` more rule-7 pools of one target, drawn one after another from `rng` (see `sample_candidates`).

    Returns `[(candidates, label)]`, one per pool; empty when `num_pools` is 0.
    """
    return [sample_candidates(target, interacted, num_items, num_candidates, rng) for _ in range(num_pools)]


def history_prefixes(history: list[int], min_history: int) -> list[tuple[list[int], int]]:
    """`(history[:k], history[k])` for every k >= `min_history`: each history item as the target of the items before
    it, as SASRec trains on every position of a sequence."""
    return [(history[:k], history[k]) for k in range(min_history, len(history))]


def ppt_label(positions: list[int]) -> str:
    """Eq. 14: for positions `(a, b, c)` in shown order, "yes" if |a - b| <= |b - c| else "no"."""
    a, b, c = positions
    return PPT_ANSWERS[0] if abs(a - b) <= abs(b - c) else PPT_ANSWERS[1]


def sample_ppt(history: list[int], rng: np.random.Generator) -> tuple[list[int], str] | None:
    """Three positions of distinct items of `history`, in random shown order, and their Eq. 14 label.

    Returns None when the history has fewer than 3 distinct items.
    """
    if len(set(history)) < 3:
        return None
    positions, seen = [], set()
    for position in rng.permutation(len(history)).tolist():
        if history[position] not in seen:
            seen.add(history[position])
            positions.append(position)
            if len(positions) == 3:
                break
    return positions, ppt_label(positions)
