"""Every shipped training config parses with the trainer's own parser and holds valid values."""

from pathlib import Path

import pytest
from trl import TrlParser

from trainer.arguments import SpeederArguments, SpeederSFTConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_and_validates(config, tmp_path):
    parser = TrlParser((SpeederArguments, SpeederSFTConfig))
    args, training_args = parser.parse_args_and_config(
        args=["--config", str(config), "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    args.resolved()
    assert args.data_dir and training_args.output_dir == str(tmp_path)


def test_the_three_documented_configs_exist():
    assert {c.stem for c in CONFIGS} >= {"tiny", "demo", "paper"}
