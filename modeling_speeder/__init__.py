"""Speeder's Hugging Face model: config, processor, item encoder, the item-token splice, and backbone loading."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
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
from .processing_speeder import IGNORE_INDEX, PROMPT_STYLES, ItemFeatureTable, SpeederProcessor
from .prompt_speeder import (
    ITEM_TOKEN,
    LlaraPrompt,
    LlaraPromptBuilder,
    SpeederPrompt,
    SpeederPromptBuilder,
    TitlePromptBuilder,
    TmfPromptBuilder,
    USER_TOKEN,
)
from .retrieval_speeder import RETRIEVERS, SASREC_RETRIEVER_FILE, SpeederSASRecRetriever

# save_pretrained copies configuration_speeder.py, modeling_speeder.py and the files it imports (processing_speeder.py,
# prompt_speeder.py, retrieval_speeder.py) next to the weights.
SpeederConfig.register_for_auto_class()
SpeederForSequentialRec.register_for_auto_class("AutoModel")
SpeederProcessor.register_for_auto_class("AutoProcessor")
AutoProcessor.register(SpeederConfig, SpeederProcessor, exist_ok=True)
AutoConfig.register("speeder", SpeederConfig, exist_ok=True)
AutoModel.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
AutoModelForCausalLM.register(SpeederConfig, SpeederForSequentialRec, exist_ok=True)
# pipeline("sequential-recommendation", model=...); an export names the pipeline file in config.json (custom_pipelines).
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=SpeederRecommendationPipeline, pt_model=AutoModel)

__all__ = [
    "GATE_TYPES",
    "IGNORE_INDEX",
    "ITEM_CACHE_FILE",
    "ITEM_TABLE_FILE",
    "ITEM_TOKEN",
    "ItemFeatureTable",
    "LlaraPrompt",
    "LlaraPromptBuilder",
    "MODALITIES",
    "PIPELINE_TASK",
    "PROMPT_STYLES",
    "RETRIEVERS",
    "SASREC_RETRIEVER_FILE",
    "SpeederConfig",
    "SpeederForSequentialRec",
    "SpeederItemCache",
    "SpeederItemEncoder",
    "SpeederModel",
    "SpeederPreTrainedModel",
    "SpeederProcessor",
    "SpeederPrompt",
    "SpeederPromptBuilder",
    "SpeederRecommendationPipeline",
    "SpeederSASRecRetriever",
    "TitlePromptBuilder",
    "TmfPromptBuilder",
    "USER_TOKEN",
]
