"""The research runs: Speeder and the baselines over several seeds and data splits, the equal-budget LLaRA-style
comparison and the Table 3 ablations, summarised with bootstrap intervals.

    python -m trainer.research --config configs/demo.yaml --data_dir outputs/data/ml-100k,outputs/data/ml-100k-split2 \
        --seeds 42,43,44 --baselines pop,sasrec,gru4rec,bert4rec --llara true --ablations none \
        --output_dir outputs/research --results_dir results/research

For every data folder of `--data_dir` (comma-separated; each a `python -m datasets_builder` build, and another
`--seed` of the builder is another 7:2:1 split) and every training seed, it trains Speeder with the config (all of `trainer/run.py`'s arguments apply), the
ID baselines, optionally the LLaRA-style baseline on Speeder's training budget (the same rows with their history
prefixes, the same epochs, LoRA rank and learning rate) and the listed ablations. Runs already finished are reused.
Weights and checkpoints stay under `--output_dir`; the small files (metrics JSON, per-sample predictions, the
summary) are copied to `--results_dir`, to be committed. A mistake in the inputs ends with `error: <message>`.
"""

import copy
import json
from collections import defaultdict
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from baselines.trainer import MODELS, train_baseline
from metrics.predictions import (bootstrap_interval, mean_paired_difference, paired_difference, predictions_path,
                                 read_predictions, sequence_hits)
from modeling_speeder.file_utils import write_json_atomically, write_text_atomically
from trainer.arguments import ABLATIONS, SpeederArguments, SpeederSFTConfig
from trainer.curriculum import train_stages
from trainer.llm_baselines import train_llara
from trainer.run import run_cli
from trainer.stages import parse_stage_epochs

REFERENCE = "sasrec"  # the bar: Speeder against SASRec on the same pools


@dataclass
class ResearchArguments:
    seeds: str = field(default="42,43,44", metadata={"help": "Comma-separated training seeds."})
    baselines: str = field(default="pop,sasrec,gru4rec,bert4rec", metadata={"help": f"From {list(MODELS)}."})
    baseline_epochs: int = 80
    baseline_patience: int = 10
    llara: bool = field(default=False, metadata={"help": "Also train the LLaRA-style baseline on Speeder's budget."})
    ablations: str = field(default="none", metadata={"help": f"'none', 'all' or names from {list(ABLATIONS)[1:]}."})
    results_dir: str = field(default="results/research", metadata={"help": "Where the small result files go."})

    def seed_list(self) -> list[int]:
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"seeds must be comma-separated integers, got {self.seeds!r}.") from None
        if not seeds:
            raise ValueError("seeds is empty: give at least one training seed, e.g. --seeds 42,43,44.")
        return seeds

    def baseline_list(self) -> list[str]:
        names = [n.strip() for n in self.baselines.split(",") if n.strip()]
        unknown = [n for n in names if n not in MODELS]
        if unknown:
            raise ValueError(f"baselines must name models from {list(MODELS)}, got {unknown}.")
        return names

    def ablation_list(self) -> list[str]:
        if self.ablations in ("", "none"):
            return []
        names = list(ABLATIONS)[1:] if self.ablations == "all" else [a.strip() for a in self.ablations.split(",")]
        unknown = [n for n in names if n not in ABLATIONS or n == "none"]
        if unknown:
            raise ValueError(f"ablations must be 'none', 'all' or names from {list(ABLATIONS)[1:]}, got {unknown}.")
        return names


def speeder_epochs(args: SpeederArguments, training_args: SpeederSFTConfig, stages: list[int]) -> float:
    """Epochs Speeder trained over its rows, summed over the `stages` it ran (the LLaRA-style run gets as many)."""
    per_stage = parse_stage_epochs(args.stage_epochs)
    return sum(per_stage.get(n, training_args.num_train_epochs) for n in stages)


def run_one(data_dir: Path, seed: int, args: SpeederArguments, training_args: SpeederSFTConfig,
            research: ResearchArguments, out: Path) -> None:
    """Every model of one (data folder, seed) cell, each skipped when its result file exists."""
    run_args, run_training_args = copy.deepcopy(args), copy.deepcopy(training_args)
    run_args.data_dir, run_training_args.seed = str(data_dir), seed
    run_training_args.output_dir = str(out / "speeder")
    started = time.perf_counter()
    if not (out / "speeder" / "results.json").is_file():
        train_stages(copy.deepcopy(run_args), copy.deepcopy(run_training_args))
        _record_time(out / "speeder" / "wall_time.json", started)
    for name in research.ablation_list():
        folder = out / "speeder" / "ablations" / name
        if not (folder / "results.json").is_file():
            ablation_args, ablation_training_args = copy.deepcopy(run_args), copy.deepcopy(run_training_args)
            ablation_args.ablation, ablation_training_args.output_dir = name, str(folder)
            started = time.perf_counter()
            train_stages(ablation_args, ablation_training_args)
            _record_time(folder / "wall_time.json", started)
    for name in research.baseline_list():
        if not (out / "baselines" / f"{name}.json").is_file():
            train_baseline(name, data_dir, seed=seed, output_dir=out / "baselines", epochs=research.baseline_epochs,
                           patience=research.baseline_patience, show_progress=False)
    if research.llara and not (out / "baselines" / "llara.json").is_file():
        ran = [int(n) for n in json.loads((out / "speeder" / "results.json").read_text())["stages"]]
        epochs = speeder_epochs(args, training_args, ran)
        target_modules = ",".join(args.target_modules)
        train_llara(data_dir, backbone=args.backbone, max_history=args.max_history, seed=seed,
                    max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                    learning_rate=training_args.learning_rate, batch_size=training_args.per_device_train_batch_size,
                    lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_target_modules=target_modules,
                    prefix_min_history=args.prefix_min_history, num_train_epochs=epochs,
                    output_dir=str(out / "llara_run"), results_dir=str(out / "baselines"))


def _record_time(path: Path, started: float) -> None:
    write_json_atomically(path, {"wall_time_s": round(time.perf_counter() - started, 1)})


def cell_metrics_files(cell: Path) -> dict[str, Path]:
    """The metrics file of every finished model of one cell folder, keyed by model name (`speeder`,
    `speeder/<ablation>`, and the baselines' names)."""
    found = {"speeder": cell / "speeder" / "results.json"}
    found |= {f"speeder/{folder.name}": folder / "results.json"
              for folder in sorted((cell / "speeder" / "ablations").glob("*"))}
    found |= {path.stem: path for path in sorted((cell / "baselines").glob("*.json"))}
    return {name: path for name, path in found.items() if path.is_file()}


def cell_predictions(cell: Path) -> dict[str, list[dict]]:
    """Test predictions of every model of one cell folder, keyed as `cell_metrics_files`."""
    return {name: read_predictions(predictions_path(path)) for name, path in cell_metrics_files(cell).items()
            if predictions_path(path).is_file()}


def cell_times(cell: Path) -> dict[str, float]:
    """Seconds each model of one cell took, keyed as `cell_metrics_files`: Speeder and its ablations the trainer's
    `train_runtime` summed over their stages (training only); a baseline its whole `wall_time_s`."""
    times = {}
    for name, path in cell_metrics_files(cell).items():
        metrics = json.loads(path.read_text())
        if "stages" in metrics:
            times[name] = sum(stage.get("train_runtime_s") or 0.0 for stage in metrics["stages"].values())
        elif metrics.get("wall_time_s") is not None:
            times[name] = metrics["wall_time_s"]
    return times


SUMMARY_KEYS = ("paper", "extra", "speeder_minus_paper", "speeder_minus_extra", "seconds")


def data_folder(cell_name: str) -> str:
    """The data folder (one split) of a cell named `<data folder>/seed<S>`."""
    return cell_name.split("/")[0]


def spread(cells: dict[str, dict]) -> dict:
    """Mean, std, min and max over `cells` (cell name -> figures) of each `SUMMARY_KEYS` figure they hold."""
    out = {}
    for key in SUMMARY_KEYS:
        values = [cell[key] if key == "seconds" else cell[key]["mean"] for cell in cells.values() if key in cell]
        if values:
            out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1
                        else 0.0, "min": min(values), "max": max(values), "cells": len(values)}
    return out


def summarize(output_dir: Path) -> dict:
    """Per model: test VHR@1 of each cell (paper's pool and extra pools, with intervals), the paired difference
    Speeder minus the model per cell, and the seconds it took (`cell_times`); their mean and spread over every cell
    and, under `splits`, over the cells of each data folder (one split: its training seeds)."""
    cells = sorted(p.parent.parent for p in output_dir.glob("*/seed*/speeder/results.json"))
    if not cells:
        raise FileNotFoundError(f"No finished research cell under {output_dir} (expected */seed*/speeder/).")
    cell_names = [f"{cell.parent.name}/{cell.name}" for cell in cells]
    models: dict[str, dict] = {}
    pairs: dict[tuple[str, str, str], list] = defaultdict(list)  # (model, data folder, pools) -> per-cell hits
    for cell, cell_name in zip(cells, cell_names):
        predictions, times = cell_predictions(cell), cell_times(cell)
        for name, records in predictions.items():
            entry = models.setdefault(name, {"cells": {}})
            figures = {"seconds": times[name]} if name in times else {}
            for pools in ("paper", "extra"):
                hits = sequence_hits(records, pools)
                if not hits:
                    continue
                figures[pools] = bootstrap_interval(hits.values())
                speeder_hits = sequence_hits(predictions.get("speeder", []), pools)
                if name != "speeder" and speeder_hits and set(speeder_hits) == set(hits):
                    figures[f"speeder_minus_{pools}"] = paired_difference(speeder_hits, hits)
                    pairs[name, data_folder(cell_name), pools].append((speeder_hits, hits))
            entry["cells"][cell_name] = figures
    splits = sorted({data_folder(name) for name in cell_names})
    for name, entry in models.items():
        entry.update(spread(entry["cells"]))
        entry["splits"] = {split: spread({cell: figures for cell, figures in entry["cells"].items()
                                          if data_folder(cell) == split}) for split in splits}
        for split in splits:
            for pools in ("paper", "extra"):
                if pairs.get((name, split, pools)):
                    entry["splits"][split][f"speeder_minus_{pools}_interval"] = mean_paired_difference(
                        pairs[name, split, pools])
    return {"cells": cell_names, "splits": splits, "models": models}


def summary_table(summary: dict, split: str | None = None) -> str:
    """Markdown: per model, mean ± std over cells (every cell, or those of data folder `split`) of VHR@1 and of
    Speeder minus the model, paper's pool and extra pools; for one data folder also the 95% interval of the mean
    difference over its seeds (paired per test sequence, `mean_paired_difference`)."""
    def cell(figures, key):
        value = figures.get(key)
        return "–" if value is None else f"{value['mean']:.4f} ± {value['std']:.4f} (n={value['cells']})"

    def interval(figures, key):
        value = figures.get(key)
        return "–" if value is None else f"{value['mean']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"

    pooled = ("| Speeder − model, mean over seeds with 95% interval, paper's pool | the same, extra pools "
              if split else "")
    lines = ["| model | VHR@1, paper's pool | VHR@1, extra pools | Speeder − model, paper's pool | "
             f"Speeder − model, extra pools {pooled}| cells where the difference's 95% interval is above 0 | seconds |",
             "| --- " * (9 if split else 7) + "|"]
    for name, entry in summary["models"].items():
        figures = entry if split is None else entry["splits"].get(split, {})
        cells = {c: f for c, f in entry["cells"].items() if split is None or data_folder(c) == split}
        if not cells:
            continue
        above = [c for c, f in cells.items() if "speeder_minus_paper" in f and f["speeder_minus_paper"]["low"] > 0]
        count = sum(1 for f in cells.values() if "speeder_minus_paper" in f)
        seconds = f"{figures['seconds']['mean']:,.0f}" if "seconds" in figures else "–"
        lines.append(f"| {name} | {cell(figures, 'paper')} | {cell(figures, 'extra')} | "
                     f"{cell(figures, 'speeder_minus_paper')} | {cell(figures, 'speeder_minus_extra')} | "
                     + (f"{interval(figures, 'speeder_minus_paper_interval')} | "
                        f"{interval(figures, 'speeder_minus_extra_interval')} | " if split else "")
                     + f"{f'{len(above)} of {count}' if count else '–'} | {seconds} |")
    return "\n".join(lines) + "\n"


def summary_markdown(summary: dict) -> str:
    """summary.md: a table per data folder (its training seeds), then one over every cell."""
    parts = [f"# Research runs\n\nCells: {', '.join(summary['cells'])}.\n\n"
             "Test VHR@1, mean ± std over cells (each cell: one data split and one training seed); differences are "
             "paired per cell. Seconds, mean over cells: Speeder's training time summed over its stages, a baseline's "
             "whole run.\n"]
    for split in summary["splits"]:
        parts.append(f"\n## Data folder `{split}`\n\n" + summary_table(summary, split))
    if len(summary["splits"]) > 1:
        parts.append("\n## Every cell\n\n" + summary_table(summary))
    return "".join(parts)


def export_results(output_dir: Path, results_dir: Path, summary: dict) -> None:
    """Copies every metrics JSON and predictions file (no weights) and writes summary.json / summary.md."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for path in output_dir.rglob("*"):
        small = path.suffix == ".jsonl" or path.name in ("results.json", "stage_metrics.json", "wall_time.json") \
            or path.parent.name == "baselines" and path.suffix == ".json"
        if path.is_file() and small and "checkpoint-" not in str(path) and "llara_run" not in str(path):
            target = results_dir / path.relative_to(output_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    write_json_atomically(results_dir / "summary.json", summary)
    write_text_atomically(results_dir / "summary.md", summary_markdown(summary))


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((SpeederArguments, SpeederSFTConfig, ResearchArguments))
    args, training_args, research = parser.parse_args_and_config(args=argv)
    seeds = research.seed_list()
    research.baseline_list(), research.ablation_list()  # fail on a bad name before the first run
    data_dirs = [Path(d.strip()) for d in args.data_dir.split(",") if d.strip()]
    output_dir = Path(training_args.output_dir)
    for data_dir in data_dirs:
        if not (data_dir / "stats.json").is_file():
            raise FileNotFoundError(f"{data_dir} is not a built data folder (no stats.json): build it with "
                                    "`python -m datasets_builder`.")
    for data_dir in data_dirs:
        for seed in seeds:
            print(f"== research cell {data_dir.name}, seed {seed}")
            run_one(data_dir, seed, args, training_args, research, output_dir / data_dir.name / f"seed{seed}")
    summary = summarize(output_dir)
    export_results(output_dir, Path(research.results_dir), summary)
    print(summary_markdown(summary))
    return summary


if __name__ == "__main__":
    run_cli(main)
