"""Speeder's Hugging Face model: config, item encoder, the item-token splice, and backbone loading."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.pipelines import PIPELINE_REGISTRY

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
from .pipeline_speeder import PIPELINE_TASK, SpeederRecommendationPipeline
from .prompt_speeder import ITEM_TOKEN, SpeederPrompt, SpeederPromptBuilder
from .retrieval_speeder import RETRIEVERS, SASREC_RETRIEVER_FILE, SpeederSASRecRetriever

# save_pretrained copies configuration_speeder.py, modeling_speeder.py and the files it imports (prompt_speeder.py,
# retrieval_speeder.py) next to the weights.
SpeederConfig.register_for_auto_class()
SpeederForSequentialRec.register_for_auto_class("AutoModel")
AutoConfig.register("speeder", SpeederConfig, exist_ok=True)
AutoModel.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
AutoModelForCausalLM.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
# pipeline("sequential-recommendation", model=...); an export names the pipeline file in config.json (custom_pipelines).
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=SpeederRecommendationPipeline, pt_model=AutoModel)

__all__ = [
    "GATE_TYPES",
    "ITEM_CACHE_FILE",
    "ITEM_TABLE_FILE",
    "ITEM_TOKEN",
    "MODALITIES",
    "PIPELINE_TASK",
    "RETRIEVERS",
    "SASREC_RETRIEVER_FILE",
    "SpeederConfig",
    "SpeederForSequentialRec",
    "SpeederItemCache",
    "SpeederItemEncoder",
    "SpeederModel",
    "SpeederPreTrainedModel",
    "SpeederPrompt",
    "SpeederPromptBuilder",
    "SpeederRecommendationPipeline",
    "SpeederSASRecRetriever",
]
