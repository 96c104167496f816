"""Evaluation speed: each sequence's pools scored with its history prefix computed once, against one full pass per
pool (issue 18). The same model, rows and batches; the scores of the two must agree.

    python -m bench.evaluation --data-dir outputs/data/ml-100k --threads 1 --out outputs/bench   # ~3 min on 2 cores
    python -m bench.evaluation --data-dir DATA --backbone tiny --sequences 4 --repeats 1 --out /tmp/ev  # seconds

A built data folder with extra pools (`datasets_builder --extra-pools K`, default 10) gives, per valid sequence, the
paper's pool and its K extra ones: K + 1 prompts that differ only after the history, in their candidates. The model
is `configs/demo.yaml`'s (`--config`) with a fresh item encoder and LoRA, so its speed is a trained model's speed.
Timed runs alternate between the two ways (`--repeats` each, medians), so a load that drifts on a shared machine
hits both alike; the ratio is the figure to read. Writes `evaluation.json` under `--out`.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from trl import TrlParser

from datasets_builder.build import load_built_dataset
from modeling_speeder import SpeederProcessor
from modeling_speeder.file_utils import write_json_atomically
from trainer.arguments import SpeederArguments, SpeederSFTConfig
from trainer.evaluation import pools_by_sequence, score_pools
from trainer.model_building import build_model
from trainer.training_data import load_features


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="a built data folder with extra pools (valid_pools)")
    p.add_argument("--config", default="configs/demo.yaml", help="training config whose model is timed")
    p.add_argument("--backbone", default=None, help="override the config's backbone (e.g. tiny)")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--sequences", type=int, default=32, help="sequences timed, each with all its pools")
    p.add_argument("--batch-size", type=int, default=16, help="eval_batch_size: rows per batch (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each way; medians (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="outputs/bench", help="folder for evaluation.json")
    args = p.parse_args(argv)
    if not (Path(args.data_dir) / "stats.json").is_file():
        p.error(f"--data-dir {args.data_dir} is not a built data folder (no stats.json): build it with "
                "`python -m datasets_builder movielens --out DIR`.")
    if args.sequences < 1 or args.repeats < 1:
        p.error("--sequences and --repeats must be >= 1.")
    return args


def run(args) -> dict:
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = ["--config", args.config, "--data_dir", args.data_dir, "--output_dir", str(Path(args.out) / "unused")]
    speeder_args, _ = TrlParser((SpeederArguments, SpeederSFTConfig)).parse_args_and_config(
        args=flags + (["--backbone", args.backbone] if args.backbone else []))
    speeder_args = speeder_args.resolved()
    data, _, _ = load_built_dataset(args.data_dir)
    if f"{args.split}_pools" not in data or not len(data[f"{args.split}_pools"]):
        raise ValueError(f"{args.data_dir} has no extra {args.split} pools: rebuild it with --extra-pools K (K >= 1).")
    features = load_features(args.data_dir, speeder_args)
    model, tokenizer = build_model(speeder_args, features, args.seed, None)
    model.eval()
    modalities = tuple(features.features)
    collator = SpeederProcessor.from_model_config(model.get_base_model().config, tokenizer).with_items(
        features, modalities)
    rows = [data[args.split][i] for i in range(min(args.sequences, len(data[args.split])))]
    wanted = {row["sequence_id"] for row in rows}
    extra = [row for row in data[f"{args.split}_pools"] if row["sequence_id"] in wanted]
    grouped = pools_by_sequence(rows, extra)
    if grouped is None:
        raise ValueError(f"The {args.split} sequences of {args.data_dir} have different numbers of extra pools.")
    samples, pools_per_sequence = grouped

    def timed(group_size: int) -> tuple[float, list]:
        started = time.perf_counter()
        scores, _ = score_pools(model, collator, samples, args.batch_size, group_size, desc=f"group {group_size}")
        return time.perf_counter() - started, scores

    timed(pools_per_sequence)  # warm-up
    seconds = {"one_pass_per_pool": [], "shared_history_prefix": []}
    for _ in range(args.repeats):
        for name, group_size in (("one_pass_per_pool", 1), ("shared_history_prefix", pools_per_sequence)):
            elapsed, scores = timed(group_size)
            seconds[name].append(elapsed)
            if name == "one_pass_per_pool":
                reference = scores
            else:
                max_difference = max(abs(a - b) for x, y in zip(scores, reference) for a, b in zip(x, y))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "config": {"data_dir": args.data_dir, "config": args.config, "backbone": speeder_args.backbone,
                   "split": args.split, "sequences": len(rows), "pools_per_sequence": pools_per_sequence,
                   "batch_size": args.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads()},
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "seconds": seconds,
        "median_seconds": medians,
        "ms_per_pool": {name: 1e3 * value / len(samples) for name, value in medians.items()},
        "speedup": medians["one_pass_per_pool"] / medians["shared_history_prefix"],
        "max_score_difference": max_difference,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / "evaluation.json", result)
    print(json.dumps({k: result[k] for k in ("config", "ms_per_pool", "speedup", "max_score_difference")}, indent=1))
    return result


if __name__ == "__main__":
    main()
