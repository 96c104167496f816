"""Run artifacts a user reads: the training log as JSON and CSV, a PNG of the curves, and the results table."""

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULT_COLUMNS = ("hr@1", "valid_ratio", "vhr@1", "ndcg@5")


def write_log(log_history: list[dict], folder: Path) -> None:
    """`log_history.json` and `log.csv` (one row per logged step, the union of all keys as columns)."""
    (folder / "log_history.json").write_text(json.dumps(log_history, indent=2))
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
