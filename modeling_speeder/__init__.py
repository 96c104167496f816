"""Speeder's Hugging Face model: config, item encoder, the item-token splice, and backbone loading."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_speeder import GATE_TYPES, MODALITIES, SpeederConfig
from .modeling_speeder import (
    ITEM_CACHE_FILE,
    ITEM_TABLE_FILE,
    SpeederForSequentialRec,
    SpeederItemCache,
    SpeederItemEncoder,
    SpeederModel,
    SpeederPreTrainedModel,
)
from .prompt_speeder import ITEM_TOKEN, SpeederPrompt, SpeederPromptBuilder

# save_pretrained copies configuration_speeder.py, modeling_speeder.py and prompt_speeder.py next to the weights.
SpeederConfig.register_for_auto_class()
SpeederForSequentialRec.register_for_auto_class("AutoModel")
AutoConfig.register("speeder", SpeederConfig, exist_ok=True)
AutoModel.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
AutoModelForCausalLM.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)

__all__ = [
    "GATE_TYPES",
    "ITEM_CACHE_FILE",
    "ITEM_TABLE_FILE",
    "ITEM_TOKEN",
    "MODALITIES",
    "SpeederConfig",
    "SpeederForSequentialRec",
    "SpeederItemCache",
    "SpeederItemEncoder",
    "SpeederModel",
    "SpeederPreTrainedModel",
    "SpeederPrompt",
    "SpeederPromptBuilder",
]
