"""Reading the data builder's output (`DATA_DIR/sequences`, `DATA_DIR/items`) into tensors the baselines train on."""

from pathlib import Path

import datasets
import torch

from .base import PADDING_VALUE

SPLITS = ("train", "valid", "test")
EXTRA_POOL_SPLITS = ("valid_pools", "test_pools")  # the builder's extra seeded pools of the valid/test sequences
COLUMNS = ("history", "target", "candidates", "label")


def load_baseline_data(data_dir: str | Path) -> tuple[datasets.DatasetDict, int]:
    """The `train`/`valid`/`test` splits, the extra pools of valid/test when the data has them (other splits
    dropped), and `num_items` (= rows of `items/`), checked."""
    data_dir = Path(data_dir)
    for sub in ("sequences", "items"):
        if not (data_dir / sub).is_dir():
            raise FileNotFoundError(
                f"{data_dir / sub} does not exist: DATA_DIR must be the output folder of "
                f"`python -m datasets_builder` (with sequences/ and items/)."
            )
    sequences = datasets.load_from_disk(str(data_dir / "sequences"))
    if not isinstance(sequences, datasets.DatasetDict):
        raise ValueError(f"{data_dir / 'sequences'} holds a single Dataset; expected a DatasetDict with {SPLITS}.")
    missing = [s for s in SPLITS if s not in sequences]
    if missing:
        raise ValueError(f"{data_dir / 'sequences'} lacks split(s) {missing}; it has {list(sequences)}.")
    num_items = len(datasets.load_from_disk(str(data_dir / "items")))
    splits = datasets.DatasetDict({s: sequences[s] for s in SPLITS + EXTRA_POOL_SPLITS if s in sequences})
    for split, ds in splits.items():
        absent = [c for c in COLUMNS if c not in ds.column_names]
        if absent:
            raise ValueError(f"Split {split!r} lacks column(s) {absent}; it has {ds.column_names}.")
        if len(ds) == 0:
            if split in EXTRA_POOL_SPLITS:
                continue
            raise ValueError(f"Split {split!r} of {data_dir / 'sequences'} is empty.")
        histories, targets, candidates = ds["history"][:], ds["target"][:], ds["candidates"][:]
        largest = max(max((max(h, default=-1) for h in histories), default=-1), max(targets), max(map(max, candidates)))
        smallest = min(min((min(h, default=0) for h in histories), default=0), min(targets), min(map(min, candidates)))
        if largest >= num_items or smallest < 0:
            raise ValueError(
                f"Split {split!r} uses item indices {smallest}..{largest}, but {data_dir / 'items'} has {num_items} "
                f"rows (valid indices 0..{num_items - 1}): items/ and sequences/ come from different builds."
            )
    return splits, num_items


def build_train_windows(train: datasets.Dataset, window_length: int) -> torch.LongTensor:
    """Train sequences (history + target) cut into windows a causal model trains on in one pass: `[S, W]`.

    Predicting every item of a window from the items before it trains on every prefix of the sequence (the
    standard SASRec augmentation) at the cost of one forward pass. A sequence longer than `window_length` is cut
    from its end into windows that share one item, so each next-item transition is a target exactly once (early in
    a later window its history is shorter than the full prefix). Right-padded with -1.
    """
    if window_length < 2:
        raise ValueError(f"window_length must be >= 2, got {window_length}.")
    windows = []
    for history, target in zip(train["history"][:], train["target"][:]):
        sequence = list(history) + [target]
        end = len(sequence)
        while end > 1:
            windows.append(sequence[max(0, end - window_length) : end])
            end -= window_length - 1
    if not windows:
        raise ValueError("The train split has no sequence of two or more items: there is nothing to learn from.")
    out = torch.full((len(windows), max(map(len, windows))), PADDING_VALUE, dtype=torch.long)
    for row, window in enumerate(windows):
        out[row, : len(window)] = torch.as_tensor(window, dtype=torch.long)
    return out
