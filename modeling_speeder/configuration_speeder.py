"""Speeder model configuration."""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .prompt_speeder import MODEL_CANDIDATE_LABELS

MODALITIES = ("text", "vision", "id")
GATE_TYPES = ("tanh", "relu", "none")
_AUTO_MAP = {
    "AutoConfig": "configuration_speeder.SpeederConfig",
    "AutoModel": "modeling_speeder.SpeederForSequentialRec",
    "AutoModelForCausalLM": "modeling_speeder.SpeederForSequentialRec",
}


class SpeederConfig(PretrainedConfig):
    r"""
    Configuration of [`SpeederForSequentialRec`]: a causal-LM backbone (`text_config`) plus the item encoder that
    turns pre-computed text, vision and sequential-ID features into one soft token per item.

    Args:
        text_config (`dict` or `PretrainedConfig`): config of the backbone causal LM (Llama, Qwen2, GPT-2, ...).
        modalities (`list[str]`): modalities the item encoder has adapters and experts for, a subset of
            `("text", "vision", "id")`.
        text_feature_size, vision_feature_size, id_feature_size (`int`): width of each pre-computed feature.
        normalize_features (`bool`): scale each item's feature vector to unit RMS before its modality adapter, so that
            modalities from different encoders enter on one scale (MiniLM titles have norm 1, SASRec rows ~0.4).
        fusion_hidden_size (`int`): width `d_f` of the Mixture of Modality Experts (MoME).
        fusion_num_attention_heads (`int`): heads of MoME's shared self-attention; must divide `fusion_hidden_size`.
        fusion_intermediate_size (`int`): inner width of every expert FFN.
        num_modality_expert_layers (`int`): `L1`, MoME layers with hard-routed T/V/S experts.
        num_multimodal_expert_layers (`int`): `L2`, MoME layers with one multimodal expert.
        fusion_dropout (`float`): dropout inside MoME, in [0, 1).
        gate_type (`str`): gate on non-text modalities before MoME: `"tanh"` (Eq. 18), `"relu"` or `"none"`.
        gate_bias_init (`float`): start value of a tanh gate's bias `b` (its weight starts at 0): 0 is the paper's
            closed gate; a positive value passes `tanh(b)` of the modality from the first step.
        max_history_length (`int`): rows of the Position Prompt Learning table (longest history the model reads).
        use_history_positions (`bool`): add the PPL table to history items (False = the "w/o PPL" ablation).
        history_indices (`bool`): write each history item's index before its `<item>` token (the paper's prompt);
            False writes one `<item>` token per history item, its order carried by PPL alone.
        user_token (`bool`): start each prompt with one `<user>` soft token made from the user's sequence
            representation (`user_features`, e.g. SASRec's state after the history), as A-LLMRec does.
        user_feature_size (`int`): width of the user features.
        item_token_id (`int`): id of the `<item>` placeholder token in the backbone's vocabulary.
        user_token_id (`int`): id of the `<user>` placeholder token (with `user_token`).
        candidate_labels (`list[str]`): label text of each candidate slot in the prompt.
        candidate_label_token_ids (`list[int]`): token id of each candidate label (its answer token).
    """

    model_type = "speeder"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PretrainedConfig | None = None
    modalities: list[str] | None = None
    text_feature_size: int = 384
    vision_feature_size: int = 1280
    id_feature_size: int = 64
    normalize_features: bool = True
    fusion_hidden_size: int = 256
    fusion_num_attention_heads: int = 4
    fusion_intermediate_size: int = 1024
    num_modality_expert_layers: int = 1
    num_multimodal_expert_layers: int = 1
    fusion_dropout: float = 0.0
    gate_type: str = "tanh"
    gate_bias_init: float = 0.0
    max_history_length: int = 50
    use_history_positions: bool = True
    history_indices: bool = True
    user_token: bool = False
    user_feature_size: int = 64
    item_token_id: int | None = None
    user_token_id: int | None = None
    candidate_labels: list[str] | None = None
    candidate_label_token_ids: list[int] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # save_pretrained registers one auto class per class; the model answers to AutoModelForCausalLM too.
        self.auto_map = {**_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        if self.modalities is None:
            self.modalities = list(MODALITIES)
        if self.candidate_labels is None:
            self.candidate_labels = list(MODEL_CANDIDATE_LABELS)
        if not isinstance(self.modalities, (list, tuple)) or not self.modalities or set(self.modalities) - set(MODALITIES):
            raise ValueError(f"modalities must be a non-empty subset of {list(MODALITIES)}, got {self.modalities!r}.")
        self.modalities = [m for m in MODALITIES if m in self.modalities]
        for name in ("text_feature_size", "vision_feature_size", "id_feature_size", "fusion_hidden_size",
                     "fusion_num_attention_heads", "fusion_intermediate_size", "max_history_length",
                     "user_feature_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        for name in ("num_modality_expert_layers", "num_multimodal_expert_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}.")
        if self.num_modality_expert_layers + self.num_multimodal_expert_layers < 1:
            raise ValueError("MoME needs at least one layer: num_modality_expert_layers + num_multimodal_expert_layers >= 1.")
        if self.fusion_hidden_size % self.fusion_num_attention_heads:
            raise ValueError(
                f"fusion_hidden_size ({self.fusion_hidden_size}) must be divisible by fusion_num_attention_heads "
                f"({self.fusion_num_attention_heads})."
            )
        if not 0.0 <= self.fusion_dropout < 1.0:
            raise ValueError(f"fusion_dropout must lie in [0, 1), got {self.fusion_dropout}.")
        if self.gate_type not in GATE_TYPES:
            raise ValueError(f"gate_type must be one of {list(GATE_TYPES)}, got {self.gate_type!r}.")
        if len(self.candidate_labels) < 2:
            raise ValueError(f"candidate_labels needs at least 2 labels, got {self.candidate_labels!r}.")
        if self.candidate_label_token_ids is not None and len(self.candidate_label_token_ids) != len(
            self.candidate_labels
        ):
            raise ValueError(
                f"candidate_label_token_ids has {len(self.candidate_label_token_ids)} ids for "
                f"{len(self.candidate_labels)} candidate_labels: give one token id per label."
            )
        if self.user_token and self.item_token_id is not None and self.user_token_id is None:
            raise ValueError("user_token=True needs user_token_id, the id of the <user> token in the tokenizer: build "
                             "the model with modeling_speeder.backbones.build_speeder_model(..., user_token=True).")
        vocab_size = getattr(self.text_config, "vocab_size", None)
        for name in ("item_token_id", "user_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and vocab_size is not None and not 0 <= token_id < vocab_size:
                raise ValueError(f"{name} must lie in 0..{vocab_size - 1} (the backbone's vocabulary), got {token_id}.")

    @property
    def hidden_size(self) -> int:
        """The backbone's hidden size `d`: the width of every item embedding."""
        return self.text_config.hidden_size

    def feature_size(self, modality: str) -> int:
        return getattr(self, f"{modality}_feature_size")


__all__ = ["SpeederConfig", "MODALITIES", "GATE_TYPES"]
