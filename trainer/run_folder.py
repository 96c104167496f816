"""What a run folder records: its config (checked on a rerun) and the marker of each finished stage."""

import hashlib
import json
from pathlib import Path

from datasets_builder.features import files_revision
from modeling_speeder import MODALITIES
from modeling_speeder.file_utils import write_json_atomically

from .arguments import SpeederArguments, SpeederSFTConfig

RUN_CONFIG = "run_config.json"
STAGE_DONE = "stage_metrics.json"  # written last into a stage folder: the stage finished


def data_fingerprint(data_dir: str, modalities) -> str:
    """A digest of the sequence and feature files a run reads: a rerun on rebuilt data is not the same run."""
    root = Path(data_dir)
    files = sorted((root / "sequences").rglob("data-*.arrow"))  # not the cache-*.arrow files `map` adds
    files += [root / "features" / f"{m}.safetensors" for m in modalities]
    revisions = [f"{path.relative_to(root).as_posix()}:{files_revision(path)}" for path in files if path.is_file()]
    return hashlib.sha256("\n".join(revisions).encode()).hexdigest()[:16]


def run_config(args: SpeederArguments, training_args: SpeederSFTConfig) -> dict:
    """What a run folder records in `run_config.json`: the arguments, the training settings that change the
    weights, and the `data_fingerprint` of what the run reads."""
    modalities = [m for m in MODALITIES if m not in args.dropped_modalities]
    return args.to_dict() | {"seed": training_args.seed, "learning_rate": training_args.learning_rate,
                             "num_train_epochs": training_args.num_train_epochs, "max_steps": training_args.max_steps,
                             "data": data_fingerprint(args.data_dir, modalities)}


def check_run_config(run_dir: Path, config: dict) -> None:
    """A rerun/resume of a recorded run with a different config fails naming what differs; nothing is written.

    Keys that an older record lacks are not compared, so runs recorded before a key was added still resume."""
    path = run_dir / RUN_CONFIG
    if path.exists():
        previous = json.loads(path.read_text())
        differs = {k: (previous[k], v) for k, v in config.items() if k in previous and previous[k] != v
                   and k != "resume"}
        if differs:
            lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differs.items())
            raise ValueError(
                f"{run_dir} holds a run with another config ({lines}). Use a new --output_dir, or the same values."
            )


def record_run_config(run_dir: Path, config: dict) -> None:
    """Records the run's config, once training really starts: a start that fails on its inputs (a wrong --data_dir,
    missing features, a bad LoRA target) leaves no record, so the corrected rerun is not refused."""
    check_run_config(run_dir, config)
    if not (run_dir / RUN_CONFIG).exists():
        write_json_atomically(run_dir / RUN_CONFIG, config)

