"""Paired comparison of two trainer runs on the same stored pools, from their per-sample predictions.

    .venv/bin/python scripts/compare_runs.py outputs/runs/demo outputs/runs/demo-1tok --split valid \
        --out results/main_job/history_indices_valid.json

`--split valid` reads the last finished stage's valid predictions (`stageN/stage_metrics.predictions.jsonl`),
`--split test` the final test predictions (`results.predictions.jsonl`). Prints and writes each run's VHR@1 with its
95% bootstrap interval over sequences, on the paper's pool and on the extra pools, and the paired interval of
A minus B.
"""

import argparse
import json
import sys
from pathlib import Path

# Run as a file (`python scripts/compare_runs.py`): import from the repository root, not from this folder.
if __package__ in (None, ""):
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path[0:1] = [_ROOT] if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent else [_ROOT, sys.path[0]]

from metrics.predictions import bootstrap_interval, paired_difference, predictions_path, read_predictions, sequence_hits


def run_predictions(run_dir: Path, split: str) -> list[dict]:
    if split == "test":
        return read_predictions(predictions_path(run_dir / "results.json"))
    stages = sorted(run_dir.glob("stage*/stage_metrics.json"), key=lambda p: int(p.parent.name.removeprefix("stage")))
    if not stages:
        raise FileNotFoundError(f"{run_dir} has no finished stage (stage*/stage_metrics.json).")
    return read_predictions(predictions_path(stages[-1]))


def compare(run_a: Path, run_b: Path, split: str) -> dict:
    a, b = run_predictions(run_a, split), run_predictions(run_b, split)
    result = {"a": str(run_a), "b": str(run_b), "split": split}
    for pools in ("paper", "extra"):
        hits_a, hits_b = sequence_hits(a, pools), sequence_hits(b, pools)
        if hits_a and hits_b:
            result[pools] = {"a": bootstrap_interval(hits_a.values()), "b": bootstrap_interval(hits_b.values()),
                             "a_minus_b": paired_difference(hits_a, hits_b)}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--out", type=Path, help="JSON file to write the comparison to.")
    args = parser.parse_args(argv)
    result = compare(args.run_a, args.run_b, args.split)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
