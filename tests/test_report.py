"""Ablation runs and the results report, on the tiny backbone."""

import json

import pytest
from speeder_fixtures import write_planted_dataset

from metrics.predictions import read_predictions, write_predictions
from trainer.ablations import AblationArguments
from trainer.ablations import main as run_ablations
from trainer.report import main as write_report
from trainer.run import main as run

TINY = ["--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--eval_generate", "false",
        "--max_eval_samples", "8", "--max_steps", "1", "--save_strategy", "no", "--bf16", "false"]


def test_ablations_and_report_show_every_row(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=30)
    (data_dir / "baselines").mkdir()
    sasrec = {"hr@1": 0.5, "valid_ratio": 1.0, "vhr@1": 0.5, "ndcg@5": 0.7}
    (data_dir / "baselines" / "sasrec.json").write_text(json.dumps({"test_metrics": sasrec}))
    common = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), *TINY]
    run(common)
    ablations = run_ablations([*common, "--ablations", "wo_ppt,gate_none"])
    assert set(ablations) == {"wo_ppt", "gate_none"}
    assert (tmp_path / "run" / "ablations" / "wo_ppt" / "results.json").is_file()
    records = read_predictions(tmp_path / "run" / "results.predictions.jsonl")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["pool"] for r in records] == [0] * results["test"]["num_samples"]  # the fixture has no extra pools
    hits = sum(r["answer"] == r["label"] for r in records)
    assert hits / len(records) == pytest.approx(results["test"]["vhr@1"])
    sasrec_records = [{**r, "answer": r["label"]} for r in records]  # a perfect SASRec: Speeder - SASRec <= 0
    write_predictions(tmp_path / "data" / "baselines" / "sasrec.predictions.jsonl", sasrec_records)
    phases = tmp_path / "phases.tsv"
    phases.write_text("phase\tseconds\n1. Data\t75\ntotal\t610\n")
    report = write_report(["--run", str(tmp_path / "run"), "--phases", str(phases)]).read_text()
    assert "| 1. Data | 1 min 15 s |" in report and "| total | 10 min 10 s |" in report
    assert "AVX512-BF16" in report and "AMX" in report  # the machine line names its bf16 instructions
    assert results["finished_on"]["bf16"] is False  # tests run in fp32; the run records where it ran, and how
    assert f"Run finished on: {results['finished_on']['machine']}; bf16 autocast off (fp32)." in report
    assert "| SASRec | 0.5000 | 1.0000 | 0.5000 | 0.7000 |" in report
    assert "### Intervals" in report
    assert "| stage | id gate | vision gate |" in report  # the run's tanh gates, measured after each stage
    assert (tmp_path / "run" / "report" / "gates.png").stat().st_size > 0
    sasrec_row = next(line for line in report.splitlines() if line.startswith("| SASRec | 1.0000 [1.0000, 1.0000]"))
    difference = 1 - results["test"]["vhr@1"]
    assert f"| -{difference:.4f} [" in sasrec_row or difference == 0
    assert "| Speeder |" in report and "| wo_ppt |" in report and "| gate_none |" in report
    assert (tmp_path / "run" / "report" / "results.png").stat().st_size > 0


def test_report_shows_the_vision_check_and_names_what_is_missing(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=30)
    common = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), *TINY]
    run(common)
    check = tmp_path / "vision_check"
    (check / "ablations" / "wo_vision").mkdir(parents=True)
    (check / "results.json").write_text(json.dumps({"test": {"hr@1": 0.6, "valid_ratio": 1.0, "vhr@1": 0.6}}))
    with pytest.raises(FileNotFoundError, match="ablations/wo_vision/results.json"):
        write_report(["--run", str(tmp_path / "run"), "--vision-check", str(check)])
    without = {"test": {"hr@1": 0.25, "valid_ratio": 1.0, "vhr@1": 0.25}}
    (check / "ablations" / "wo_vision" / "results.json").write_text(json.dumps(without))
    report = write_report(["--run", str(tmp_path / "run"), "--vision-check", str(check)]).read_text()
    assert "## Vision check" in report
    assert "| with vision (stages 1-2) | 0.6000 | 1.0000 | 0.6000 |" in report
    assert "| without vision (wo_vision) | 0.2500 | 1.0000 | 0.2500 |" in report


def test_unknown_ablation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="wo_ppt"):
        AblationArguments(ablations="wo_nothing").names()
