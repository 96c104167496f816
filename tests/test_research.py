"""The research command: seeds x data folders for Speeder, its ablations and the baselines, and the summary."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from speeder_fixtures import write_planted_dataset

from metrics.predictions import write_predictions
from trainer.research import ResearchArguments, summarize, summary_markdown
from trainer.research import main as research

REPO = Path(__file__).resolve().parents[1]

TINY = ["--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--max_eval_samples", "8", "--max_steps", "1",
        "--save_strategy", "no", "--bf16", "false", "--stages", "1"]


def test_research_runs_every_cell_and_summarises_them(tmp_path):
    data = write_planted_dataset(tmp_path / "data", num_sequences=40)
    argv = ["--data_dir", str(data), "--seeds", "1,2", "--baselines", "pop", "--baseline_epochs", "2",
            "--ablations", "wo_ppt", "--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"),
            *TINY]
    summary = research(argv)
    assert summary["cells"] == ["data/seed1", "data/seed2"]
    assert set(summary["models"]) == {"speeder", "speeder/wo_ppt", "pop"}
    pop = summary["models"]["pop"]
    assert set(pop["cells"]) == {"data/seed1", "data/seed2"} and pop["paper"]["cells"] == 2
    assert "speeder_minus_paper" in pop["cells"]["data/seed1"]
    assert "speeder_minus_paper" not in summary["models"]["speeder"]["cells"]["data/seed1"]
    assert summary["models"]["speeder"]["seconds"]["cells"] == pop["seconds"]["cells"] == 2
    assert summary["models"]["speeder"]["cells"]["data/seed1"]["seconds"] > 0
    results = tmp_path / "results"
    assert (results / "data" / "seed2" / "speeder" / "results.predictions.jsonl").is_file()
    assert (results / "data" / "seed1" / "baselines" / "pop.predictions.jsonl").is_file()
    assert not list(results.rglob("*.safetensors"))  # weights stay in --output_dir
    assert json.loads((results / "summary.json").read_text()) == summary
    assert "| pop |" in (results / "summary.md").read_text()

    finished = (tmp_path / "out" / "data" / "seed1" / "speeder" / "results.json").stat().st_mtime_ns
    research(argv)  # a rerun reuses every finished run
    assert (tmp_path / "out" / "data" / "seed1" / "speeder" / "results.json").stat().st_mtime_ns == finished


def write_cell(cell: Path, hits: dict[str, list[int]]) -> None:
    """A finished research cell whose models answer right (1) or wrong (0) on each sequence's paper's pool."""
    for name, answers in hits.items():
        metrics = cell / "speeder" / "results.json" if name == "speeder" else cell / "baselines" / f"{name}.json"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps({"wall_time_s": 1.0}))
        write_predictions(metrics.with_name(f"{metrics.stem}.predictions.jsonl"), [
            {"sequence_id": i, "pool": 0, "candidates": [1, 2], "label": 0, "scores": None, "answer": 1 - hit}
            for i, hit in enumerate(answers)])


def test_summary_gives_each_data_folder_its_own_mean_over_seeds(tmp_path):
    write_cell(tmp_path / "split42" / "seed1", {"speeder": [1, 1, 0, 0], "pop": [1, 0, 0, 0]})
    write_cell(tmp_path / "split42" / "seed2", {"speeder": [1, 1, 1, 1], "pop": [1, 1, 0, 0]})
    write_cell(tmp_path / "split7" / "seed1", {"speeder": [0, 0, 0, 0], "pop": [1, 1, 1, 0]})
    summary = summarize(tmp_path)
    assert summary["splits"] == ["split42", "split7"]
    speeder, pop = summary["models"]["speeder"], summary["models"]["pop"]
    assert speeder["splits"]["split42"]["paper"]["mean"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert speeder["splits"]["split42"]["paper"]["cells"] == 2
    assert speeder["splits"]["split7"]["paper"]["mean"] == 0.0
    assert speeder["paper"]["mean"] == pytest.approx(0.5) and speeder["paper"]["cells"] == 3  # every cell
    assert pop["splits"]["split7"]["speeder_minus_paper"]["mean"] == pytest.approx(-0.75)
    pooled = pop["splits"]["split42"]["speeder_minus_paper_interval"]  # mean over seeds, paired per sequence
    assert pooled["mean"] == pytest.approx((0.25 + 0.5) / 2) and pooled["runs"] == 2 and pooled["n"] == 4
    assert pooled["low"] <= pooled["mean"] <= pooled["high"]
    markdown = summary_markdown(summary)
    assert "## Data folder `split42`" in markdown and "## Data folder `split7`" in markdown
    assert "| speeder | 0.7500 ± 0.3536 (n=2) |" in markdown and "| speeder | 0.0000 ± 0.0000 (n=1) |" in markdown


def test_research_names_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="integers"):
        ResearchArguments(seeds="1,x").seed_list()
    with pytest.raises(ValueError, match="sasrec"):
        ResearchArguments(baselines="sasrek").baseline_list()
    with pytest.raises(FileNotFoundError, match="not a built data folder"):
        research(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), *TINY])


def test_research_script_runs_every_part_on_the_tiny_config(tmp_path):
    env = {**os.environ, "CONFIG": "configs/tiny.yaml", "OUT": str(tmp_path / "out"),
           "RESULTS": str(tmp_path / "results"), "SEEDS": "1", "SPLIT_SEEDS": "42", "ABLATIONS": "wo_ppt",
           "LLARA": "true", "SASREC_EPOCHS": "2", "BASELINE_EPOCHS": "2", "VISION_CHECK_STEPS": "5"}
    result = subprocess.run(["bash", "scripts/research.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    summary = json.loads((results / "summary.json").read_text())
    assert {"speeder", "speeder/wo_ppt", "sasrec", "llara"} <= set(summary["models"])
    assert summary["models"]["llara"]["cells"]["ml-100k-split42/seed1"]["speeder_minus_paper"]["n"] > 0
    assert (results / "zero_shot" / "zero_shot.predictions.jsonl").is_file()
    vision = (results / "vision_check" / "report.md").read_text()
    assert "| with vision (stages 1-2) |" in vision and "| without vision (wo_vision) |" in vision
    assert (results / "vision_check" / "ablations" / "wo_vision" / "results.predictions.jsonl").is_file()


def test_learning_tests_script_records_every_outcome_per_seed_and_thread_count(tmp_path):
    cases = tmp_path / "test_cases.py"
    cases.write_text("import os\n\n\ndef test_passes():\n    pass\n\n\n"
                     "def test_fails_on_seed_2():\n    assert os.environ['SPEEDER_TEST_SEED'] != '2'\n\n\n"
                     "def test_fails_in_bf16():\n    assert os.environ['SPEEDER_TEST_BF16'] == 'false'\n")
    env = {**os.environ, "SEEDS": "1,2", "THREADS": "1", "BF16": "false,true", "RESULTS": str(tmp_path / "results"),
           "TESTS": str(cases)}
    result = subprocess.run(["bash", "scripts/learning_tests.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line.split("\t") for line in (tmp_path / "results" / "outcomes.tsv").read_text().splitlines()[1:]]
    outcomes = {(case.rsplit("::", 1)[1], seed, bf16): outcome for case, threads, seed, outcome, _, _, bf16 in rows}
    for bf16 in ("false", "true"):
        assert outcomes[("test_passes", "1", bf16)] == outcomes[("test_passes", "2", bf16)] == "passed"
        assert outcomes[("test_fails_on_seed_2", "1", bf16)] == "passed"
        assert outcomes[("test_fails_on_seed_2", "2", bf16)] == "failed"
    assert [outcomes[("test_fails_in_bf16", seed, bf16)] for bf16 in ("false", "true") for seed in "12"] == [
        "passed", "passed", "failed", "failed"]
    rates = (tmp_path / "results" / "pass_rates.tsv").read_text()
    assert "test_fails_on_seed_2\t2\t4" in rates and "test_passes\t4\t4" in rates and "test_fails_in_bf16\t2\t4" in rates
    assert "test_fails_on_seed_2" in (tmp_path / "results" / "failures.log").read_text()
