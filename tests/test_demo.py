"""The README's main command, on the tiny config: every step of scripts/demo.sh runs and leaves its output."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_main_job_runs_end_to_end_on_the_tiny_config(tmp_path):
    env = {**os.environ, "DEMO_CONFIG": "configs/tiny.yaml", "OUT": str(tmp_path), "SASREC_EPOCHS": "2",
           "BASELINE_EPOCHS": "2"}
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data, run = tmp_path / "data" / "ml-100k", tmp_path / "runs" / "tiny"
    assert {p.name for p in (data / "baselines").glob("*.json")} >= {"pop.json", "sasrec.json", "gru4rec.json",
                                                                      "bert4rec.json"}
    assert (data / "baselines" / "sasrec.predictions.jsonl").is_file()
    results = json.loads((run / "results.json").read_text())
    assert results["final_stage"] == 3 and "extra_pools" in results["test"]  # MovieLens has no images: 1 and 3
    assert (run / "results.predictions.jsonl").is_file()
    assert (tmp_path / "hub" / "speeder-ml100k-tiny" / "item_embeddings.safetensors").is_file()
    assert "Speeder's ranking of the candidate pool" in result.stdout  # from the exported folder, fresh process
    report = (run / "report" / "report.md").read_text()
    full_ranking = json.loads((run / "full_ranking_test.json").read_text())
    tested = {json.loads(line)["sequence_id"] for line in (run / "results.predictions.jsonl").read_text().splitlines()}
    assert {record["sequence_id"] for record in full_ranking["records"]} >= tested  # the whole test split
    assert (tmp_path / "hub" / "speeder-ml100k-tiny" / "retriever_sasrec.safetensors").is_file()
    for row in ("| SASRec |", "| Speeder |", "### Intervals", "## Wall time of the main job", "| total |",
                "## Full-catalogue ranking (test split)", "| SASRec → Speeder |"):
        assert row in report
