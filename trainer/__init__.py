"""Speeder training: the MPO stage curriculum on TRL's SFTTrainer, the collator, evaluation and reports."""

from .arguments import ABLATIONS, SpeederArguments, SpeederSFTConfig
from .collator import ItemFeatureTable, SpeederCollator
from .evaluation import evaluate_ppt, evaluate_recommendation
from .stages import STAGES, Stage, apply_stage

__all__ = [
    "ABLATIONS",
    "STAGES",
    "ItemFeatureTable",
    "SpeederArguments",
    "SpeederCollator",
    "SpeederSFTConfig",
    "Stage",
    "apply_stage",
    "evaluate_ppt",
    "evaluate_recommendation",
]
