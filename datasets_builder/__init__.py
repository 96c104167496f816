"""Raw interaction logs to Speeder's sequences, candidate pools, PPT samples and cached item features."""

from modeling_speeder.configuration_speeder import MODALITIES

from .build import BuildConfig, build_dataset, load_built_dataset, movielens_config
from .features import compute_item_features, load_item_features
from .readers import FORMATS, read_interactions, read_item_metadata
from .synthetic import SyntheticConfig, generate_synthetic_dataset

__all__ = [
    "FORMATS",
    "MODALITIES",
    "BuildConfig",
    "SyntheticConfig",
    "build_dataset",
    "compute_item_features",
    "generate_synthetic_dataset",
    "load_built_dataset",
    "load_item_features",
    "movielens_config",
    "read_interactions",
    "read_item_metadata",
]
