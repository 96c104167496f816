"""Small Speeder models and data sets written in the data builder's output format, for fast tests."""

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import save_file

from modeling_speeder.backbones import build_speeder_model

REPO_PACKAGES = ("modeling_speeder", "trainer", "datasets_builder", "hub_upload", "metrics", "baselines", "bench")
TINY_MODEL_KWARGS = dict(
    text_feature_size=12,
    vision_feature_size=10,
    id_feature_size=8,
    fusion_hidden_size=32,
    fusion_num_attention_heads=4,
    fusion_intermediate_size=64,
    max_history_length=8,
)


def tiny_model(seed: int = 0, **overrides):
    """A Speeder model on the tiny random Llama backbone (a few hundred thousand parameters) and its tokenizer."""
    torch.manual_seed(seed)
    return build_speeder_model("tiny", **{**TINY_MODEL_KWARGS, **overrides})


def item_inputs(num_items: int, modality_mask=None, seed: int = 0, history_positions=None) -> dict:
    """Random item features for `num_items` placeholders (all modalities present unless a mask is given)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "text_features": torch.randn(num_items, TINY_MODEL_KWARGS["text_feature_size"], generator=generator),
        "vision_features": torch.randn(num_items, TINY_MODEL_KWARGS["vision_feature_size"], generator=generator),
        "id_features": torch.randn(num_items, TINY_MODEL_KWARGS["id_feature_size"], generator=generator),
        "modality_mask": torch.ones(num_items, 3, dtype=torch.bool) if modality_mask is None else modality_mask,
    }
    if history_positions is not None:
        inputs["history_positions"] = torch.as_tensor(history_positions)
    return inputs


def write_planted_dataset(
    data_dir: Path, num_items: int = 24, num_sequences: int = 120, history_length: int = 6, num_candidates: int = 5,
    modalities=("text", "vision", "id"), seed: int = 0,
) -> Path:
    """A data set whose next item is always `(last item + 1) mod num_items`, with random item features.

    Written exactly as `python -m datasets_builder` writes: `sequences/` (train/valid/test + ppt_train/ppt_valid),
    `items/`, `features/<modality>.safetensors`.
    """
    rng = random.Random(seed)
    rows = []
    for sequence_id in range(num_sequences):
        start = rng.randrange(num_items)
        items = [(start + k) % num_items for k in range(history_length + 1)]
        history, target = items[:-1], items[-1]
        negatives = rng.sample([i for i in range(num_items) if i not in items], num_candidates - 1)
        candidates = negatives + [target]
        rng.shuffle(candidates)
        rows.append({"sequence_id": sequence_id, "user_id": f"u{sequence_id}", "history": history,
                     "target": target, "candidates": candidates, "label": candidates.index(target)})
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(num_items, TINY_MODEL_KWARGS[f"{m}_feature_size"], generator=generator)
                for m in modalities}
    return write_dataset(data_dir, rows, features, seed)


def write_salient_dataset(data_dir: Path, num_items: int = 40, num_sequences: int = 1000, history_length: int = 6,
                          seed: int = 0) -> Path:
    """A data set whose targets are always "liked" items (half of them) and whose negatives never are; only the ID
    features tell the two apart (a +2 offset on every dimension). A model that reads its items learns it fast."""
    rng = random.Random(seed)
    liked, other = list(range(0, num_items, 2)), list(range(1, num_items, 2))
    rows = []
    for sequence_id in range(num_sequences):
        history = rng.sample(range(num_items), history_length)
        target = rng.choice([i for i in liked if i not in history])
        candidates = rng.sample([i for i in other if i not in history], 4) + [target]
        rng.shuffle(candidates)
        rows.append({"sequence_id": sequence_id, "user_id": f"u{sequence_id}", "history": history,
                     "target": target, "candidates": candidates, "label": candidates.index(target)})
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(num_items, TINY_MODEL_KWARGS[f"{m}_feature_size"], generator=generator)
                for m in ("text", "id")}
    features["id"][liked] += 2.0
    return write_dataset(data_dir, rows, features, seed)


def write_dataset(data_dir: Path, rows: list[dict], features: dict[str, torch.Tensor], seed: int = 0) -> Path:
    """Writes recommendation rows (split 7:2:1, in order), their PPT samples and per-item features exactly as
    `python -m datasets_builder` writes them."""
    rng = random.Random(seed)
    num_items = next(iter(features.values())).shape[0]
    cut1, cut2 = int(0.7 * len(rows)), int(0.9 * len(rows))
    splits = {"train": rows[:cut1], "valid": rows[cut1:cut2], "test": rows[cut2:]}
    for name in ("train", "valid"):
        ppt = []
        for row in splits[name]:
            positions = rng.sample(range(len(row["history"])), 3)
            a, b, c = positions
            ppt.append({"sequence_id": row["sequence_id"], "user_id": row["user_id"], "history": row["history"],
                        "ppt_positions": positions, "ppt_label": "yes" if abs(a - b) <= abs(b - c) else "no"})
        splits[f"ppt_{name}"] = ppt
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(data_dir / "sequences"))
    Dataset.from_list([
        {"item_index": i, "item_id": f"item{i}", "title": f"item {i}", "text": f"item {i}", "image_path": "",
         "has_text": True, "has_image": "vision" in features} for i in range(num_items)
    ]).save_to_disk(str(data_dir / "items"))
    (data_dir / "features").mkdir(parents=True, exist_ok=True)
    for modality, values in features.items():
        save_file({"features": values, "present": torch.ones(num_items, dtype=torch.bool)},
                  str(data_dir / "features" / f"{modality}.safetensors"))
    (data_dir / "stats.json").write_text(json.dumps({"items": num_items, "sequences": len(rows)}))
    return data_dir


def learning_seed(default: int) -> int:
    """The training seed of a learning test: `default`, or SPEEDER_TEST_SEED, with which
    `scripts/learning_tests.sh` loops every learning test over other seeds before a change to one lands."""
    return int(os.environ.get("SPEEDER_TEST_SEED", default))


def learning_bf16() -> str:
    """`--bf16` of a learning test that trains an LLM: "false" (fp32, as CI runs), or SPEEDER_TEST_BF16, with which
    `scripts/learning_tests.sh` loops them with bf16 autocast on as well."""
    value = os.environ.get("SPEEDER_TEST_BF16", "false").lower()
    if value not in ("true", "false"):
        raise ValueError(f"SPEEDER_TEST_BF16 must be 'true' or 'false', got {value!r}.")
    return value


def chance_bound(num_pools: int, num_candidates: int = 5, alpha: float = 1e-3) -> float:
    """The HR@1 that a model answering at random reaches with probability below `alpha` on `num_pools` independent
    pools of `num_candidates`: the smallest k / n with P(Binomial(n, 1 / m) >= k) <= alpha. A learning test asserts
    HR@1 at or above it, a margin set by the number of pools rather than by one run's figure."""
    p = 1 / num_candidates
    tail = 1.0
    for k in range(num_pools + 1):
        if tail <= alpha:
            return k / num_pools
        tail -= math.comb(num_pools, k) * p**k * (1 - p) ** (num_pools - k)
    return 1.0


def isolated_code(code: str) -> str:
    """`code` behind a guard that makes this repository's packages unimportable, for `python -c`: what a user who
    has only an exported folder (not this repository) would run."""
    guard = f"""
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {REPO_PACKAGES!r}:
            raise ImportError("the repository is not importable here: " + name)
sys.meta_path.insert(0, _Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
"""
    return guard + textwrap.dedent(code)


def run_isolated(code: str) -> str:
    """Runs `code` in a fresh interpreter that cannot import this repository's packages."""
    result = subprocess.run([sys.executable, "-c", isolated_code(code)], capture_output=True, text=True,
                            cwd="/", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
