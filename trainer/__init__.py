"""Speeder training: the MPO stage curriculum on TRL's SFTTrainer, evaluation and reports.

* `curriculum`: the stages, one SFTTrainer run each, then the test split;
* `sft_trainer`: `SpeederSFTTrainer` (the paper's LR schedule, two learning rates, Speeder's metrics);
* `model_building`: the model of a run, aligned and wrapped with LoRA;
* `training_data`: training rows and item features read from a built DATA_DIR;
* `evaluation`: HR@k / NDCG@k / ValidRatio / PPT accuracy on stored pools;
* `run_folder`: what a run folder records; `report`: logs, curves, tables and the run report;
* `llm_baselines`: the LLaRA-style and zero-shot baselines on the same setup.

Batches come from `modeling_speeder.SpeederProcessor`.
"""

from modeling_speeder import ItemFeatureTable, SpeederProcessor

from .arguments import ABLATIONS, SpeederArguments, SpeederSFTConfig
from .collator import SpeederCollator
from .curriculum import train_stages
from .evaluation import evaluate_ppt, evaluate_recommendation
from .stages import STAGES, Stage, apply_stage

__all__ = [
    "ABLATIONS",
    "STAGES",
    "ItemFeatureTable",
    "SpeederArguments",
    "SpeederCollator",
    "SpeederProcessor",
    "SpeederSFTConfig",
    "Stage",
    "apply_stage",
    "evaluate_ppt",
    "evaluate_recommendation",
    "train_stages",
]
