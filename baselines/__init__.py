"""ID-based sequential recommendation baselines (Pop, SASRec, GRU4Rec, BERT4Rec): one trainer, one evaluator."""

from .base import PADDING_VALUE, BaselineConfig, SequentialRecommender, pad_histories
from .bert4rec import BERT4Rec, BERT4RecConfig
from .data import build_train_windows, load_baseline_data
from .evaluator import evaluate_pools, score_pools
from .gru4rec import GRU4Rec, GRU4RecConfig
from .pop import Pop, PopConfig
from .sasrec import SASRec, SASRecConfig
from .trainer import MODELS, BaselineResult, BaselineTrainingArguments, train_baseline, valid_fields

__all__ = [
    "PADDING_VALUE",
    "BaselineConfig",
    "SequentialRecommender",
    "pad_histories",
    "Pop",
    "PopConfig",
    "SASRec",
    "SASRecConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "BERT4Rec",
    "BERT4RecConfig",
    "load_baseline_data",
    "build_train_windows",
    "score_pools",
    "evaluate_pools",
    "MODELS",
    "BaselineResult",
    "BaselineTrainingArguments",
    "train_baseline",
    "valid_fields",
]
