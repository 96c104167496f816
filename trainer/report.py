"""What a user reads of a run: each stage's training log (JSON, CSV, a PNG of the curves), the results table, and the
report: Table 2 (Speeder vs baselines), Table 3 (ablations), curves, vision check, efficiency.

    python -m trainer.report --run outputs/runs/demo [--vision-check outputs/runs/vision_check]
        [--benchmark outputs/bench/efficiency.json] [--out DIR]

Every figure is read from the files the runs wrote: `results.json` of the run and of each ablation run
(`RUN/ablations/<name>/`), `DATA_DIR/baselines/<name>.json`, `DATA_DIR/stats.json`, the vision-check run (with its
`wo_vision` ablation) and the benchmark JSON.
"""

import argparse
import csv
import json
import platform
import shutil
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metrics.predictions import (  # noqa: E402
    bootstrap_interval,
    paired_difference,
    predictions_path,
    read_predictions,
    sequence_hits,
)
from modeling_speeder.file_utils import write_json_atomically  # noqa: E402

from .arguments import machine_description  # noqa: E402

RESULT_COLUMNS = ("hr@1", "valid_ratio", "vhr@1", "ndcg@5")


def write_log(log_history: list[dict], folder: Path) -> None:
    """`log_history.json` and `log.csv` (one row per logged step, the union of all keys as columns)."""
    write_json_atomically(folder / "log_history.json", log_history)
    columns = sorted({key for row in log_history for key in row})
    with open(folder / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(log_history)


def plot_training_curve(log_history: list[dict], path: Path, title: str) -> None:
    """Loss, learning rate and (when evaluated) valid HR@1 / PPT accuracy against the training step."""
    train = [row for row in log_history if "loss" in row and "step" in row]
    evals = [row for row in log_history if "eval_hr@1" in row]
    fig, axes = plt.subplots(1, 3 if evals else 2, figsize=(12 if evals else 8, 3.2))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], marker=".")
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([r["step"] for r in train], [r.get("learning_rate", float("nan")) for r in train])
    axes[1].set(title="learning rate", xlabel="step")
    if evals:
        for key in ("eval_hr@1", "eval_ppt_accuracy"):
            points = [(r["step"], r[key]) for r in evals if key in r]
            if points:
                axes[2].plot(*zip(*points), marker="o", label=key.removeprefix("eval_"))
        axes[2].set(title="valid", xlabel="step")
        axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_row(name: str, metrics: dict) -> str:
    """One table row; "–" where a model has no such figure (generation-only baselines have no NDCG)."""
    return f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" if k in metrics else "–" for k in RESULT_COLUMNS) + " |"


def results_table(results: dict) -> str:
    """Markdown table: valid metrics after each stage, then test metrics of the final stage."""
    lines = ["| model | HR@1 | ValidRatio | VHR@1 | NDCG@5 |", "| --- | --- | --- | --- | --- |"]
    for number, stage in sorted(results["stages"].items()):
        lines.append(format_row(f"stage {number} (valid)", stage["valid"]))
    lines.append(format_row(f"Speeder, stage {results['final_stage']} (test)", results["test"]))
    return "\n".join(lines) + "\n"


BASELINE_NAMES = {"pop": "Pop (popularity)", "gru4rec": "GRU4Rec", "sasrec": "SASRec", "bert4rec": "BERT4Rec",
                  "llara": "LLaRA-style", "zero_shot": "Backbone, zero-shot"}


FULL_RANKING_FILE = "full_ranking_test.json"  # written into the run folder by scripts/demo.sh


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(run_dir: Path) -> dict:
    """All results a report shows, keyed by table."""
    results = _read(run_dir / "results.json")
    if results is None:
        raise FileNotFoundError(f"{run_dir}/results.json not found: train first with trainer/run.py.")
    data_dir = Path(results["config"]["data_dir"])
    models, predictions = {}, {}
    for key, name in BASELINE_NAMES.items():
        path = data_dir / "baselines" / f"{key}.json"
        baseline = _read(path)
        if baseline is not None:
            models[name] = baseline["test_metrics"]
            if predictions_path(path).is_file():
                predictions[name] = read_predictions(predictions_path(path))
    models["Speeder"] = results["test"]
    if predictions_path(run_dir / "results.json").is_file():
        predictions["Speeder"] = read_predictions(predictions_path(run_dir / "results.json"))
    ablations = {"Speeder (full)": results["test"]}
    for folder in sorted((run_dir / "ablations").glob("*")):
        ablation = _read(folder / "results.json")
        if ablation is not None:
            ablations[folder.name] = ablation["test"]
    return {"results": results, "models": models, "ablations": ablations, "stats": _read(data_dir / "stats.json"),
            "data_dir": str(data_dir), "predictions": predictions, "finished_on": results.get("finished_on")}


def collect_vision_check(run_dir: Path) -> dict[str, dict]:
    """Test metrics of a configs/vision_check.yaml run and of its `wo_vision` ablation."""
    with_vision = _read(run_dir / "results.json")
    without_vision = _read(run_dir / "ablations" / "wo_vision" / "results.json")
    if with_vision is None or without_vision is None:
        raise FileNotFoundError(
            f"{run_dir}: needs results.json and ablations/wo_vision/results.json; run trainer/run.py and "
            "trainer/ablations.py --ablations wo_vision with configs/vision_check.yaml first."
        )
    return {"with vision (stages 1-2)": with_vision["test"], "without vision (wo_vision)": without_vision["test"]}


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | HR@1 | ValidRatio | VHR@1 | NDCG@5 |", "| --- | --- | --- | --- | --- |"]
    return "\n".join(lines + [format_row(name, metrics) for name, metrics in rows.items()]) + "\n"


def _interval(value: dict | None) -> str:
    return "–" if value is None else f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"


def interval_table(predictions: dict[str, list[dict]], reference: str = "Speeder") -> str:
    """VHR@1 of each model with its 95% bootstrap interval over test sequences, on the paper's pool and on the extra
    pools, and the paired interval of `reference` minus each model."""
    lines = [f"| model | VHR@1, paper's pool | VHR@1, extra pools | {reference} − model, paper's pool | "
             f"{reference} − model, extra pools |", "| --- | --- | --- | --- | --- |"]
    for name, records in predictions.items():
        cells = []
        for pools in ("paper", "extra"):
            hits = sequence_hits(records, pools)
            cells.append(_interval(bootstrap_interval(hits.values()) if hits else None))
        for pools in ("paper", "extra"):
            hits = sequence_hits(records, pools)
            reference_hits = sequence_hits(predictions[reference], pools) if reference in predictions else {}
            same = hits and reference_hits and name != reference and set(hits) == set(reference_hits)
            cells.append(_interval(paired_difference(reference_hits, hits)) if same else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gate_table(stages: dict[str, dict]) -> str:
    """How far each gate is open at the end of each stage (mean gate value; 0 = shut, 1 = open)."""
    gated = sorted({m for stage in stages.values() for m in stage.get("gate_openness", {})})
    if not gated:
        return ""
    lines = ["| stage | " + " | ".join(f"{m} gate" for m in gated) + " |", "| --- |" + " --- |" * len(gated)]
    for number, stage in sorted(stages.items()):
        openness = stage.get("gate_openness", {})
        lines.append(f"| {number} | " + " | ".join(f"{openness[m]:.3f}" if m in openness else "–" for m in gated)
                     + " |")
    return "\n".join(lines) + "\n"


def plot_gates(stages: dict[str, dict], path: Path) -> bool:
    """Bars of each gate's openness per stage; False (nothing drawn) when no stage had a gate."""
    gated = sorted({m for stage in stages.values() for m in stage.get("gate_openness", {})})
    if not gated:
        return False
    fig, ax = plt.subplots(figsize=(4.5, 3))
    numbers = sorted(stages)
    width = 0.8 / len(gated)
    for k, modality in enumerate(gated):
        values = [stages[n].get("gate_openness", {}).get(modality, 0.0) for n in numbers]
        ax.bar([i + k * width for i in range(len(numbers))], values, width, label=f"{modality} gate")
    ax.set_xticks([i + width * (len(gated) - 1) / 2 for i in range(len(numbers))], [f"stage {n}" for n in numbers])
    ax.set(ylabel="mean gate value", ylim=(0, 1), title="How far each tanh gate is open")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_models(models: dict[str, dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 2, 3.2))
    names = list(models)
    ax.bar(names, [models[n].get("vhr@1", 0.0) for n in names], color=["#999"] * (len(names) - 1) + ["#d62728"])
    ax.axhline(0.2, ls="--", c="k", lw=0.8, label="random (1/5)")
    ax.set(ylabel="test VHR@1", ylim=(0, 1), title="Same stored candidate pools (m = 5)")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def phase_table(path: Path) -> str:
    """The main job's phases and their wall times from `scripts/demo.sh`'s `phases.tsv`."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    lines = ["| phase | wall time |", "| --- | --- |"]
    lines += [f"| {name} | {int(seconds) // 60} min {int(seconds) % 60} s |" for name, seconds in rows]
    return "\n".join(lines) + "\n"


def write_report(
    run_dir: Path, out_dir: Path, benchmark: Path | None = None, vision_check: Path | None = None,
    phases: Path | None = None,
) -> Path:
    """Writes `report.md` and its PNGs into `out_dir`; returns the Markdown path."""
    found = collect(run_dir)
    vision_rows = collect_vision_check(vision_check) if vision_check is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_models(found["models"], out_dir / "results.png")
    lines = [f"# Speeder results: `{run_dir}`", "",
             f"Machine: {machine_description()}, {platform.system()}; "
             f"data: `{found['data_dir']}`.", ""]
    if found.get("finished_on"):  # where the run's last stage and its test evaluation ran
        run = found["finished_on"]
        lines += [f"Run finished on: {run['machine']}; bf16 autocast {'on' if run['bf16'] else 'off (fp32)'}.", ""]
    if phases is not None and phases.is_file():
        lines += ["## Wall time of the main job", "", phase_table(phases)]
    stats = found["stats"] or {}
    if stats:
        lines += ["## Data", "", "| interactions | items | sequences | avg. sequence length |", "| --- | --- | --- | --- |",
                  f"| {stats.get('interactions')} | {stats.get('items')} | {stats.get('sequences')} | "
                  f"{stats.get('avg_sequence_length')} |", ""]
    lines += ["## Speeder and baselines (test split, stored pools; paper Table 2)", "", table(found["models"]),
              "![VHR@1 per model](results.png)", ""]
    if found["predictions"]:
        lines += ["### Intervals", "",
                  "Mean hit (= VHR@1) with its 95% bootstrap interval over test sequences (2,000 resamples), from "
                  "each model's per-sample predictions (`*.predictions.jsonl` beside its metrics). The paper's "
                  "pool is the one stored pool per sequence; the extra pools are the builder's K further seeded "
                  "pools of the same sequences (a sequence counts once, with its mean hit over them). Differences "
                  "are paired: both models are resampled on the same sequences.", "",
                  interval_table(found["predictions"])]
    lines += ["## Stages (valid split)", "", table({f"stage {k}": v["valid"] for k, v in
                                                    sorted(found["results"]["stages"].items())})]
    if plot_gates(found["results"]["stages"], out_dir / "gates.png"):
        lines += ["Gate openness at the end of each stage (mean of `tanh(A e + b)` over items and channels):", "",
                  gate_table(found["results"]["stages"]), "![gate openness per stage](gates.png)", ""]
    for number in sorted(found["results"]["stages"]):
        curve = run_dir / f"stage{number}" / "training_curve.png"
        if curve.is_file():
            shutil.copy(curve, out_dir / f"stage{number}_training_curve.png")
            lines.append(f"![stage {number} training curve](stage{number}_training_curve.png)")
    lines.append("")
    full_ranking = _read(run_dir / FULL_RANKING_FILE)
    if full_ranking is not None:
        settings = full_ranking["settings"]
        lines += ["## Full-catalogue ranking (test split)", "",
                  f"`{FULL_RANKING_FILE}` (`python -m trainer.full_ranking`): SASRec's top {settings['top_k']} of "
                  f"every item the user has not seen in the history, against the same list with its first "
                  f"{settings['num_candidates']} re-ranked by Speeder in one pass, over "
                  f"{settings['num_sequences']} sequences; 95% bootstrap intervals, the difference paired.", "",
                  full_ranking["table"], ""]
    if len(found["ablations"]) > 1:
        lines += ["## Ablations (test split; paper Table 3)", "", table(found["ablations"])]
    if vision_rows is not None:
        lines += ["## Vision check (generated data, test split)", "",
                  f"`{vision_check}`: MPO stages 1-2 of configs/vision_check.yaml on the generated target-shape "
                  "data (the target is the candidate drawn as a circle; no title says so), real MiniLM and "
                  "EfficientNet-Lite0 features, tiny random backbone. Random is 0.2.", "", table(vision_rows)]
    if benchmark is not None and benchmark.is_file():
        bench = json.loads(benchmark.read_text())
        lines += ["## Efficiency", "", bench.get("table", ""), ""]
        png = benchmark.with_suffix(".png")
        if png.is_file():
            shutil.copy(png, out_dir / "efficiency.png")
            lines.append("![efficiency](efficiency.png)")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="A run folder of trainer/run.py.")
    parser.add_argument("--benchmark", type=Path, help="JSON written by bench/efficiency.py.")
    parser.add_argument("--vision-check", type=Path,
                        help="A configs/vision_check.yaml run with its wo_vision ablation.")
    parser.add_argument("--phases", type=Path, help="phases.tsv of scripts/demo.sh: each phase's wall time.")
    parser.add_argument("--out", type=Path, help="Report folder (default: RUN/report).")
    args = parser.parse_args(argv)
    path = write_report(args.run, args.out or args.run / "report", args.benchmark, args.vision_check, args.phases)
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    main()
