"""What a run reads from a built DATA_DIR: training rows (with history prefixes and PPT rows), the item features and,
with `--user_token`, the user encoder."""

import shlex
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, concatenate_datasets
from safetensors import safe_open

from datasets_builder.build import DEFAULT_ENCODERS, load_built_dataset, train_subset
from datasets_builder.features import (feature_data_fingerprint, load_item_features, read_feature_manifest,
                                       train_id_sasrec)
from datasets_builder.sequencing import history_prefixes
from modeling_speeder import MODALITIES, ItemFeatureTable, SpeederSASRecRetriever
from modeling_speeder.file_utils import replace_atomically

from .arguments import SpeederArguments


def training_rows(sequences, args: SpeederArguments, seed: int, max_samples: int | None,
                  shuffle_seed: int | None = None) -> Dataset:
    """Recommendation rows (with their history prefixes when `prefix_min_history` is set) plus `ppt_per_sequence`
    PPT rows per training sequence, shuffled together with `shuffle_seed` (default `seed`). `seed` picks the
    training subset, the same one the LLaRA-style baseline trains on."""
    rec = train_subset(sequences["train"], max_samples, seed)
    num_sequences = len(rec)
    features = Features({"history": List(Value("int64")), "candidates": List(Value("int64")), "label": Value("int64"),
                         "ppt_positions": List(Value("int64")), "ppt_label": Value("string")})
    rec = with_history_prefixes(rec, args.prefix_min_history, seed)
    parts = [rec.map(lambda _: {"ppt_positions": [], "ppt_label": ""}, features=features)]
    if args.ppt_per_sequence > 0 and "ppt_train" in sequences:
        ppt = sequences["ppt_train"]
        count = min(len(ppt), int(round(args.ppt_per_sequence * num_sequences)))
        ppt = ppt.shuffle(seed=seed).select(range(count)).select_columns(["history", "ppt_positions", "ppt_label"])
        parts.append(ppt.map(lambda _: {"candidates": [], "label": -1}, features=features))
    return concatenate_datasets(parts).shuffle(seed=seed if shuffle_seed is None else shuffle_seed)


def with_history_prefixes(rows: Dataset, min_history: int, seed: int) -> Dataset:
    """`rows` (history, candidates, label) followed by their `history_prefix_rows`; `min_history` 0 adds none."""
    rows = rows.select_columns(["history", "candidates", "label"])
    return concatenate_datasets([rows, history_prefix_rows(rows, min_history, seed)]) if min_history else rows


def history_prefix_rows(rows: Dataset, min_history: int, seed: int) -> Dataset:
    """More recommendation rows from the stored ones: history item k becomes the target of the k items before it,
    for every k >= `min_history`, as SASRec trains on every position of the same windows. The candidates are the
    row's stored negatives (items its user never interacted with, so negatives for any of the user's targets) plus
    that target, at a seeded random slot."""

    def expand(batch, indices):
        out = {"history": [], "candidates": [], "label": []}
        for row, history, candidates, label in zip(indices, batch["history"], batch["candidates"], batch["label"]):
            negatives = [c for i, c in enumerate(candidates) if i != label]
            rng = np.random.default_rng([seed, row])
            for prefix, target in history_prefixes(history, min_history):
                slot = int(rng.integers(len(candidates)))
                out["history"].append(prefix)
                out["candidates"].append(negatives[:slot] + [target] + negatives[slot:])
                out["label"].append(slot)
        return out

    return rows.map(expand, batched=True, with_indices=True, remove_columns=rows.column_names, features=rows.features)


USER_ENCODER_FILE = "user_encoder_sasrec.safetensors"


def user_encoder(data_dir: str, run_dir: str | Path) -> SpeederSASRecRetriever:
    """The `<user>` token's encoder of a `--user_token` run: SASRec trained on DATA_DIR as its ID features were
    (`train_id_sasrec`, seeded), over the data's items in item-index order. Trained once per run and kept in
    `RUN_DIR/user_encoder_sasrec.safetensors`, which every later stage and the test read."""
    path = Path(run_dir) / USER_ENCODER_FILE
    if not path.is_file():
        _, items, _ = load_built_dataset(data_dir)
        result, _, _ = train_id_sasrec(data_dir)
        order = sorted(zip(items["item_index"], items["item_id"]))
        encoder = SpeederSASRecRetriever.from_sasrec(result.model.cpu(), [str(item_id) for _, item_id in order])
        replace_atomically(path, encoder.save)
    return SpeederSASRecRetriever.from_file(path)


def load_features(data_dir: str, args: SpeederArguments) -> ItemFeatureTable:
    """The cached features of every modality that has a feature file with at least one present item, checked
    against the built data (`check_features_match_data`)."""
    wanted = [m for m in MODALITIES if m not in args.dropped_modalities]
    on_disk = [m for m in wanted if (Path(data_dir) / "features" / f"{m}.safetensors").is_file()]
    if not on_disk:
        raise FileNotFoundError(f"No item features for {wanted} in {data_dir}/features: run "
                                "`python -m datasets_builder features`.")
    loaded = load_item_features(data_dir, modalities=tuple(on_disk))
    check_features_match_data(data_dir, loaded)
    loaded = {m: (f, p.bool()) for m, (f, p) in loaded.items() if p.any()}
    return ItemFeatureTable({m: f for m, (f, _) in loaded.items()}, {m: p for m, (_, p) in loaded.items()})


def check_features_match_data(data_dir: str, loaded: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Raises ValueError naming the feature file and the command that recomputes it when a file's rows are not the
    built items: another row count than `DATA_DIR/items`, or another data fingerprint than the build's (the data
    was rebuilt after the features). `loaded`: modality -> (features `(num_items, d)`, present `(num_items,)`) as
    `load_item_features` returns them (it refuses non-finite values). Files without a manifest (written by hand)
    only have their rows checked."""
    _, items, stats = load_built_dataset(data_dir)
    files = {m: Path(data_dir) / "features" / f"{m}.safetensors" for m in MODALITIES}
    manifests = {m: read_feature_manifest(path) or {} for m, path in files.items() if path.is_file()}
    # the command that recomputes every file there is with its own encoder (and no file where there is none)
    encoders = {m: manifests[m].get("key", {}).get("encoder", DEFAULT_ENCODERS[m]) if m in manifests else "none"
                for m in MODALITIES}
    command = (f"`python -m datasets_builder features {shlex.quote(str(data_dir))} "
               + " ".join(f"--{m}-encoder {shlex.quote(encoder)}" for m, encoder in encoders.items()) + "`")
    for modality, (features, present) in loaded.items():
        path = files[modality]
        if features.shape[0] != len(items) or present.shape[0] != len(items):
            raise ValueError(
                f"{path} has {features.shape[0]} rows, but {Path(data_dir) / 'items'} has {len(items)} items: the "
                f"features belong to another build of the data. Recompute them: {command}."
            )
        recorded = manifests[modality].get("key", {}).get("data_fingerprint")
        expected = feature_data_fingerprint(modality, items, stats) if recorded is not None else None
        if expected is not None and recorded != expected:
            raise ValueError(
                f"{path} was computed from other data than {data_dir} holds now (data fingerprint {recorded[:12]}, "
                f"the build's {expected[:12]}): the data was rebuilt after the features. Recompute them: {command}."
            )


def modalities_in_data(data_dir: str) -> set[str]:
    """The modalities DATA_DIR has a feature file for, with at least one present item (ablations aside)."""
    found = set()
    for modality in MODALITIES:
        path = Path(data_dir) / "features" / f"{modality}.safetensors"
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if f.get_tensor("present").any():
                    found.add(modality)
    return found

