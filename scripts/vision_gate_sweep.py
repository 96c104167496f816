"""The tanh gate's start and the item encoder's learning rate, measured on the vision check's valid split.

    .venv/bin/python scripts/vision_gate_sweep.py --seeds 1,42,7 --gate-bias-init 0,0.5 \
        --item-encoder-lr 3e-4,3e-3 --out outputs/vision_gate_sweep --results results/vision_gate_sweep.json

Builds the generated target-shape data of tests/test_vision_check.py once (200 users, 120 items, 10 extra pools per
valid/test sequence, real MiniLM + EfficientNet-Lite0 features), then trains configs/vision_check.yaml (MPO stages
1-2, tanh gate on vision) for every seed x gate start x encoder learning rate, reusing finished runs. The results
file holds, per run, valid and test HR@1 on the paper's pool and on the extra pools, and the vision gate's
openness after stage 2. Choose on valid; test is there to be recomputed, not to pick from.
"""

import argparse
import json
from pathlib import Path

from datasets_builder import (
    BuildConfig,
    SyntheticConfig,
    build_dataset,
    compute_item_features,
    generate_synthetic_dataset,
)
from trainer.run import main as run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vision_check.yaml"


def build_data(root: Path) -> Path:
    raw, data = root / "raw", root / "data"
    if not (data / "features" / "vision.safetensors").is_file():
        generate_synthetic_dataset(raw, SyntheticConfig(num_users=200, num_items=120))
        build_dataset(BuildConfig(format="amazon2018", interactions=str(raw / "reviews.jsonl"),
                                  metadata=str(raw / "metadata.jsonl"), image_dir=str(raw / "images"),
                                  image_pattern="{item_id}.png", max_history=8, extra_pools=10), data)
        compute_item_features(data, text_encoder="all-MiniLM-L6-v2", vision_encoder="efficientnet-lite0",
                              id_encoder="none")
    return data


def figures(results: dict) -> dict:
    stage = results["stages"]["2"]
    return {"valid_hr@1": stage["valid"]["hr@1"], "valid_extra_pools_hr@1": stage["valid"]["extra_pools"]["hr@1"],
            "test_hr@1": results["test"]["hr@1"], "test_extra_pools_hr@1": results["test"]["extra_pools"]["hr@1"],
            "vision_gate_openness": stage.get("gate_openness", {}).get("vision")}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,42,7")
    parser.add_argument("--gate-bias-init", default="0,0.5")
    parser.add_argument("--item-encoder-lr", default="3e-4,3e-3")
    parser.add_argument("--out", type=Path, default=Path("outputs/vision_gate_sweep"))
    parser.add_argument("--results", type=Path, default=Path("results/vision_gate_sweep.json"))
    args = parser.parse_args(argv)
    data = build_data(args.out)
    rows = []
    for seed in args.seeds.split(","):
        for bias in args.gate_bias_init.split(","):
            for lr in args.item_encoder_lr.split(","):
                folder = args.out / f"seed{seed}-bias{bias}-encoder_lr{lr}"
                if (folder / "results.json").is_file():
                    results = json.loads((folder / "results.json").read_text())
                else:
                    results = run(["--config", str(CONFIG), "--data_dir", str(data), "--output_dir", str(folder),
                                   "--seed", seed, "--gate_bias_init", bias, "--item_encoder_learning_rate", lr])
                rows.append({"seed": int(seed), "gate_bias_init": float(bias), "item_encoder_learning_rate": float(lr),
                             **figures(results)})
                print(rows[-1])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"command": "scripts/vision_gate_sweep.py", "runs": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
