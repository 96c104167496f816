"""The tanh gate's start and the learning rates (LoRA's and the item encoder's), measured on the vision check's valid
split.

    .venv/bin/python scripts/vision_gate_sweep.py --seeds 1,42,7 --gate-bias-init 0,0.5 --item-encoder-lr 3e-3 \
        --results results/vision_gate_sweep.json
    .venv/bin/python scripts/vision_gate_sweep.py --seeds 1 --gate-bias-init 0,0.5 --item-encoder-lr 3e-4,3e-3 \
        --results results/vision_encoder_lr_seed1.json
    .venv/bin/python scripts/vision_gate_sweep.py --seeds 1,2,3,4,5,6 --gate-bias-init 0,0.5 --item-encoder-lr 3e-3 \
        --lora-lr 3e-3,1e-3 --results results/vision_gate_lora_lr.json

(the three commands behind the committed files). Builds the vision check's data once with
datasets_builder.synthetic.build_vision_check_data (200 users, 120 items, 10 extra pools per valid/test sequence,
real MiniLM + EfficientNet-Lite0 features), then trains configs/vision_check.yaml (MPO stages 1-2, tanh gate on
vision) for every seed x gate start x encoder learning rate x LoRA learning rate, reusing finished runs. The results
file holds, per run, valid and test HR@1 on the paper's pool and on the extra pools, and the vision gate's openness
after stage 2. Choose on valid; test is there to be recomputed, not to pick from.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

# Run as a file (`python scripts/vision_gate_sweep.py`): import from the repository root, not from this folder.
if __package__ in (None, ""):
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path[0:1] = [_ROOT] if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent else [_ROOT, sys.path[0]]

from datasets_builder.synthetic import build_vision_check_data
from trainer.run import main as run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vision_check.yaml"


def build_data(root: Path) -> Path:
    """The vision check's data under ROOT/data, built once and reused by later sweeps."""
    data = root / "data"
    if (data / "features" / "vision.safetensors").is_file():
        return data
    return build_vision_check_data(root)


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
    parser.add_argument("--lora-lr", default=None, help="LoRA's learning rates (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/vision_gate_sweep"))
    parser.add_argument("--results", type=Path, default=Path("results/vision_gate_sweep.json"))
    args = parser.parse_args(argv)
    data = build_data(args.out)
    lora_rates = args.lora_lr.split(",") if args.lora_lr else [None]
    rows = []
    for seed in args.seeds.split(","):
        for bias in args.gate_bias_init.split(","):
            for lr, lora_lr in itertools.product(args.item_encoder_lr.split(","), lora_rates):
                folder = args.out / f"seed{seed}-bias{bias}-encoder_lr{lr}{f'-lora_lr{lora_lr}' if lora_lr else ''}"
                if (folder / "results.json").is_file():
                    results = json.loads((folder / "results.json").read_text())
                else:
                    results = run(["--config", str(CONFIG), "--data_dir", str(data), "--output_dir", str(folder),
                                   "--seed", seed, "--gate_bias_init", bias, "--item_encoder_learning_rate", lr,
                                   *(["--learning_rate", lora_lr] if lora_lr else [])])
                rows.append({"seed": int(seed), "gate_bias_init": float(bias), "item_encoder_learning_rate": float(lr),
                             **({"learning_rate": float(lora_lr)} if lora_lr else {}), **figures(results)})
                print(rows[-1])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"command": "scripts/vision_gate_sweep.py", "runs": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
