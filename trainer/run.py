"""Train Speeder: the three MPO stages as successive SFTTrainer runs.

    accelerate launch trainer/run.py --config configs/tiny.yaml [--stages 2,3] [--ablation wo_ppt] [--resume true]

Every field of `SpeederArguments` and of TRL's `SFTConfig` can be set in the YAML file or on the command line.
"""

from trl import TrlParser

from trainer.arguments import SpeederArguments, SpeederSFTConfig
from trainer.pipeline import train_stages


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((SpeederArguments, SpeederSFTConfig))
    args, training_args = parser.parse_args_and_config(args=argv)
    return train_stages(args, training_args)


if __name__ == "__main__":
    main()
