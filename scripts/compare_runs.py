"""Paired comparison of two trainer runs on the same stored pools, from their per-sample predictions.

    .venv/bin/python scripts/compare_runs.py outputs/runs/demo outputs/runs/demo-1tok --split valid \
        --out results/main_job/history_indices_valid.json
    .venv/bin/python scripts/compare_runs.py A1 B1 --pair A2 B2 --pair A3 B3 --split valid --out F   # seeds

`--split valid` reads the last finished stage's valid predictions (`stageN/stage_metrics.predictions.jsonl`, or a
results folder's `stageN_metrics.predictions.jsonl`), `--split test` the final test predictions
(`results.predictions.jsonl`). Prints and writes each run's VHR@1 with its 95% bootstrap interval over sequences, on
the paper's pool and on the extra pools, and the paired interval of A minus B. With `--pair` (e.g. one pair per
training seed, all on the same data), `pairs` holds each pair's comparison and `mean_over_pairs` the mean of A minus B
over the pairs with its interval, sequences resampled alike for every pair.
"""

import argparse
import json
import sys
from pathlib import Path

# Run as a file (`python scripts/compare_runs.py`): import from the repository root, not from this folder.
if __package__ in (None, ""):
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path[0:1] = [_ROOT] if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent else [_ROOT, sys.path[0]]

from metrics.predictions import (bootstrap_interval, mean_paired_difference, paired_difference, predictions_path,
                                 read_predictions, sequence_hits)


def run_predictions(run_dir: Path, split: str) -> list[dict]:
    if split == "test":
        return read_predictions(predictions_path(run_dir / "results.json"))
    stages = {int(p.parent.name.removeprefix("stage")): p for p in run_dir.glob("stage*/stage_metrics.json")}
    stages |= {int(p.name.removeprefix("stage").removesuffix("_metrics.json")): p
               for p in run_dir.glob("stage*_metrics.json")}
    if not stages:
        raise FileNotFoundError(f"{run_dir} has no finished stage (stage*/stage_metrics.json or stage*_metrics.json).")
    return read_predictions(predictions_path(stages[max(stages)]))


def compare(run_a: Path, run_b: Path, split: str) -> dict:
    a, b = run_predictions(run_a, split), run_predictions(run_b, split)
    result = {"a": str(run_a), "b": str(run_b), "split": split}
    for pools in ("paper", "extra"):
        hits_a, hits_b = sequence_hits(a, pools), sequence_hits(b, pools)
        if hits_a and hits_b:
            result[pools] = {"a": bootstrap_interval(hits_a.values()), "b": bootstrap_interval(hits_b.values()),
                             "a_minus_b": paired_difference(hits_a, hits_b)}
    return result


def compare_pairs(pairs: list[tuple[Path, Path]], split: str) -> dict:
    """Each pair's `compare`, and the mean of A minus B over the pairs with its interval."""
    result = {"split": split, "pairs": [compare(a, b, split) for a, b in pairs], "mean_over_pairs": {}}
    predictions = [(run_predictions(a, split), run_predictions(b, split)) for a, b in pairs]
    for pools in ("paper", "extra"):
        hits = [(sequence_hits(a, pools), sequence_hits(b, pools)) for a, b in predictions]
        if all(a and b for a, b in hits):
            result["mean_over_pairs"][pools] = mean_paired_difference(hits)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--pair", nargs=2, type=Path, action="append", default=[], metavar=("RUN_A", "RUN_B"),
                        help="one more pair of runs on the same data (e.g. another training seed)")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--out", type=Path, help="JSON file to write the comparison to.")
    args = parser.parse_args(argv)
    if args.pair:
        result = compare_pairs([(args.run_a, args.run_b)] + [tuple(pair) for pair in args.pair], args.split)
    else:
        result = compare(args.run_a, args.run_b, args.split)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
