"""Deprecated: the training code moved to modules named for their job. Import from them instead:

* `trainer.curriculum`: `train_stages`, `run_stage`, `stage_modalities`;
* `trainer.sft_trainer`: `SpeederSFTTrainer`, `warmup_cosine`;
* `trainer.model_building`: `build_model`, `gate_openness`;
* `trainer.training_data`: `training_rows`, `with_history_prefixes`, `history_prefix_rows`, `load_features`;
* `trainer.evaluation`: `evaluate_split`;
* `trainer.run_folder`: `RUN_CONFIG`, `STAGE_DONE`, `run_config`, `check_run_config`;
* `modeling_speeder.file_utils.write_json_atomically` (was `write_json_atomic`).
"""

import warnings

from modeling_speeder.file_utils import write_json_atomically as write_json_atomic

from .curriculum import run_stage, stage_modalities, train_stages
from .training_data import (check_features_match_data, history_prefix_rows, load_features, modalities_in_data,
                            training_rows, with_history_prefixes)
from .evaluation import evaluate_split
from .model_building import ALIGN_MAX_ITEMS, MODULES_TO_SAVE, build_model, gate_openness
from .run_folder import RUN_CONFIG, STAGE_DONE, check_run_config, data_fingerprint, record_run_config, run_config
from .sft_trainer import SpeederSFTTrainer, warmup_cosine

warnings.warn(
    "trainer.pipeline is deprecated: import from trainer.curriculum, trainer.sft_trainer, trainer.model_building, "
    "trainer.training_data, trainer.evaluation or trainer.run_folder (see this module's docstring).",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "ALIGN_MAX_ITEMS", "MODULES_TO_SAVE", "RUN_CONFIG", "STAGE_DONE", "SpeederSFTTrainer", "build_model",
    "check_features_match_data", "check_run_config", "data_fingerprint", "evaluate_split", "gate_openness",
    "history_prefix_rows", "load_features", "modalities_in_data", "record_run_config", "run_config", "run_stage",
    "stage_modalities", "train_stages", "training_rows", "warmup_cosine", "with_history_prefixes",
    "write_json_atomic",
]
