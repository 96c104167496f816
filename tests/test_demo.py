"""The README's main command, on the tiny config: every step of scripts/demo.sh runs and leaves its output."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_main_job_runs_end_to_end_on_the_tiny_config(tmp_path):
    env = {**os.environ, "DEMO_CONFIG": "configs/tiny.yaml", "OUT": str(tmp_path), "SASREC_EPOCHS": "2",
           "BASELINE_EPOCHS": "2", "ABLATIONS": "wo_ppt,wo_stages12",
           "VISION_CHECK_STEPS": "5"}
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data, run = tmp_path / "data" / "ml-100k", tmp_path / "runs" / "tiny"
    assert {p.stem for p in (data / "baselines").glob("*.json")} >= {"pop", "sasrec", "gru4rec", "bert4rec", "llara",
                                                                       "zero_shot"}
    assert json.loads((run / "results.json").read_text())["final_stage"] == 3
    assert (tmp_path / "hub" / "speeder-ml100k-tiny" / "item_embeddings.safetensors").is_file()
    assert "Speeder's ranking of the candidate pool" in result.stdout  # from the exported folder, fresh process
    report = (run / "report" / "report.md").read_text()
    for row in ("| SASRec |", "| LLaRA-style |", "| Backbone, zero-shot |", "| Speeder |"):
        assert row in report
    for ablation in ("wo_ppt", "wo_stages12"):  # Table 3 rows, from runs on the same pools
        assert f"| {ablation} |" in report
    for row in ("| with vision (stages 1-2) |", "| without vision (wo_vision) |"):  # the vision check's runs
        assert row in report
