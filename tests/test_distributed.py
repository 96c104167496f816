"""`accelerate launch trainer/run.py` with 2 CPU processes (gloo) trains like 1 process at the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from speeder_fixtures import write_planted_dataset

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def launch(data_dir: Path, output_dir: Path, processes: int, per_device_batch: int):
    """Runs stage 1 for 3 steps through `accelerate launch` and returns the saved adapter tensors."""
    config = REPO / "configs" / "accelerate" / ("ddp.yaml" if processes == 2 else "cpu.yaml")
    command = [str(ACCELERATE), "launch", "--config_file", str(config), str(REPO / "trainer" / "run.py"),
               "--use_cpu", "true",
               "--data_dir", str(data_dir), "--output_dir", str(output_dir), "--stages", "1", "--max_steps", "3",
               "--max_train_samples", "4",
               "--per_device_train_batch_size", str(per_device_batch), "--fusion_hidden_size", "32",
               "--fusion_intermediate_size", "64", "--max_history", "8", "--learning_rate", "1e-3",
               "--lora_dropout", "0", "--bf16", "false", "--report_to", "none", "--eval_generate", "false", "--max_eval_samples", "4",
               "--save_strategy", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    return load_file(str(output_dir / "stage1" / "adapter" / "adapter_model.safetensors"))


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=40)
    single = launch(data_dir, tmp_path / "one", processes=1, per_device_batch=8)
    double = launch(data_dir, tmp_path / "two", processes=2, per_device_batch=4)
    assert single.keys() == double.keys()
    moved = 0
    for name in single:
        # 4 recommendation + 4 PPT rows = one global batch of 8, so every step sees the same samples in both runs
        # (samplers shard differently); only the order of floating-point reductions differs (gloo all-reduce).
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-5)
        moved += 1
    assert moved > 0
