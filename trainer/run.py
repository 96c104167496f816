"""Train Speeder: the three MPO stages as successive SFTTrainer runs.

    accelerate launch trainer/run.py --config configs/tiny.yaml [--stages 2,3] [--ablation wo_ppt] [--resume true]

Every field of `SpeederArguments` and of TRL's `SFTConfig` can be set in the YAML file or on the command line. A
mistake in the inputs (a bad value, a missing folder or file) ends with `error: <message>` and exit code 2.
"""

import sys
from collections.abc import Callable
from pathlib import Path

from trl import TrlParser

# Run as a file (`accelerate launch trainer/run.py`): import from the repository root, not from this folder.
if __package__ in (None, ""):
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path[0:1] = [_ROOT] if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent else [_ROOT, sys.path[0]]

from trainer.arguments import SpeederArguments, SpeederSFTConfig
from trainer.curriculum import train_stages

USER_ERRORS = (ValueError, FileNotFoundError)  # what the trainer raises for bad inputs, with a message naming the fix


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((SpeederArguments, SpeederSFTConfig))
    args, training_args = parser.parse_args_and_config(args=argv)
    return train_stages(args, training_args)


def run_cli(entry: Callable[[], object]) -> None:
    """Runs a command's `main`: a user's mistake prints `error: <message>` on stderr and exits with code 2 (no
    traceback); any other exception is a bug and keeps its traceback."""
    try:
        entry()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_cli(main)
