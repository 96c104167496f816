"""Every shipped training config parses with the trainer's own parser and holds valid values."""

from pathlib import Path

import pytest
from trl import TrlParser

import trainer.arguments as arguments
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


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(False, False, False), (True, False, True),
                                                        (False, True, True), (True, True, True)])
def test_bf16_autocast_defaults_on_where_the_cpu_multiplies_bf16_in_hardware(monkeypatch, tmp_path, amx, avx512_bf16,
                                                                            expected):
    monkeypatch.setattr(arguments.torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(arguments.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(arguments.torch.cuda, "is_available", lambda: False)
    assert arguments.cpu_bf16_instructions() == {"AMX": amx, "AVX512-BF16": avx512_bf16}
    assert f"AMX {'yes' if amx else 'no'}, AVX512-BF16 {'yes' if avx512_bf16 else 'no'}" in (
        arguments.machine_description())
    assert SpeederSFTConfig(output_dir=str(tmp_path)).bf16 is expected
    assert SpeederSFTConfig(output_dir=str(tmp_path), bf16=False).bf16 is False  # a config's choice wins
