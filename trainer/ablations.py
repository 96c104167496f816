"""Runs the paper's Table 3 ablations, each a full run of its own under `OUTPUT_DIR/ablations/<name>/`.

    accelerate launch trainer/ablations.py --config configs/demo.yaml --ablations all
    accelerate launch trainer/ablations.py --config configs/demo.yaml --ablations wo_ppt,wo_ppl

Every other argument is a `trainer/run.py` argument and applies to every ablation run. Finished runs are skipped. A
mistake in the inputs ends with `error: <message>` and exit code 2.
"""

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

# Run as a file (`accelerate launch trainer/ablations.py`): import from the repository root, not from this folder.
if __package__ in (None, ""):
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path[0:1] = [_ROOT] if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent else [_ROOT, sys.path[0]]

from trainer.arguments import ABLATIONS, SpeederArguments, SpeederSFTConfig
from trainer.curriculum import train_stages
from trainer.run import run_cli


@dataclass
class AblationArguments:
    ablations: str = field(default="all", metadata={"help": f"'all' or a comma-separated list of {list(ABLATIONS)[1:]}."})

    def names(self) -> list[str]:
        names = list(ABLATIONS)[1:] if self.ablations == "all" else [a.strip() for a in self.ablations.split(",")]
        unknown = [n for n in names if n not in ABLATIONS or n == "none"]
        if unknown or not names:
            raise ValueError(f"ablations must be 'all' or names from {list(ABLATIONS)[1:]}, got {unknown or names}.")
        return names


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = TrlParser((SpeederArguments, SpeederSFTConfig, AblationArguments))
    args, training_args, ablation_args = parser.parse_args_and_config(args=argv)
    results = {}
    for name in ablation_args.names():
        run_args, run_training_args = copy.deepcopy(args), copy.deepcopy(training_args)
        run_args.ablation = name
        run_training_args.output_dir = str(Path(training_args.output_dir) / "ablations" / name)
        print(f"Ablation {name}: {ABLATIONS[name]}")
        results[name] = train_stages(run_args, run_training_args)
    return results


if __name__ == "__main__":
    run_cli(main)
