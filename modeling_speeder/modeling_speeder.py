"""PyTorch Speeder model: one multimodal soft token per item, spliced into a causal LM (arXiv 2511.05885)."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput

from .configuration_speeder import MODALITIES, SpeederConfig
from .prompt_speeder import SpeederPromptBuilder


@dataclass
class SpeederModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `item_embeddings` (`(num_items, hidden_size)`): what was spliced in."""

    item_embeddings: torch.FloatTensor | None = None


@dataclass
class SpeederCausalLMOutputWithPast(ModelOutput):
    """Language-model outputs of [`SpeederForSequentialRec`]; `loss` is next-token cross-entropy on labelled tokens."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None
    item_embeddings: torch.FloatTensor | None = None


class SpeederExpertFFN(nn.Module):
    """One expert: `W2 ReLU(W1 x + b1) + b2` (Eq. 8)."""

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.fusion_hidden_size, config.fusion_intermediate_size)
        self.fc2 = nn.Linear(config.fusion_intermediate_size, config.fusion_hidden_size)
        self.act = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class SpeederMoMELayer(nn.Module):
    """A MoME layer over the modality tokens of each item (Eq. 5-9, post-norm).

    Shared multi-head self-attention over the present tokens, then either hard-routed modality experts (one FFN per
    modality, each applied only to its own, present, token) or one multimodal expert for all tokens.
    """

    def __init__(self, config: SpeederConfig, routed: bool):
        super().__init__()
        self.routed = routed
        self.attention = nn.MultiheadAttention(
            config.fusion_hidden_size, config.fusion_num_attention_heads, dropout=config.fusion_dropout, batch_first=True
        )
        self.attention_norm = nn.LayerNorm(config.fusion_hidden_size)
        names = config.modalities if routed else ["multimodal"]
        self.experts = nn.ModuleDict({name: SpeederExpertFFN(config) for name in names})
        self.expert_norm = nn.LayerNorm(config.fusion_hidden_size)
        self.dropout = nn.Dropout(config.fusion_dropout)

    def forward(self, hidden_states: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """hidden_states `(num_items, num_modalities, d_f)`; present `(num_items, num_modalities)` bool."""
        attended, _ = self.attention(hidden_states, hidden_states, hidden_states, key_padding_mask=~present)
        hidden_states = self.attention_norm(self.dropout(attended) + hidden_states)
        if self.routed:
            expert_out = torch.zeros_like(hidden_states)
            for slot, name in enumerate(self.experts):
                rows = present[:, slot]
                if rows.any():  # an absent modality never reaches its expert: no output, no gradient
                    expert_out[rows, slot] = self.experts[name](hidden_states[rows, slot])
        else:
            expert_out = self.experts["multimodal"](hidden_states)
        return self.expert_norm(self.dropout(expert_out)) + hidden_states


class SpeederModalityGate(nn.Module):
    """`e = act(A_tan e + b) ⊙ e` on a non-text modality (MPO stage 2), `(num_items, d_f)` → `(num_items, d_f)`.

    A tanh gate starts at zero (no influence at init, like Flamingo's gates); a ReLU gate starts open (bias 1),
    since a closed ReLU gate would never receive a gradient.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.gate_type = config.gate_type
        self.weight = nn.Parameter(torch.empty(config.fusion_hidden_size, config.fusion_hidden_size))
        self.bias = nn.Parameter(torch.empty(config.fusion_hidden_size))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        gate = nn.functional.linear(embeddings, self.weight, self.bias)
        gate = torch.tanh(gate) if self.gate_type == "tanh" else torch.relu(gate)
        return gate * embeddings


class SpeederItemEncoder(nn.Module):
    """Multimodal Representation Compression: modality features → one LLM-width embedding per item (Eq. 1-10).

    Modality adapters `A_m` map each feature to `d_f`; non-text modalities pass a gate; MoME fuses the present
    modality tokens; their mean is mapped by the feed-forward adapter `A_f` to the LLM hidden size.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.modalities = list(config.modalities)
        self.adapters = nn.ModuleDict(
            {m: nn.Linear(config.feature_size(m), config.fusion_hidden_size) for m in self.modalities}
        )
        gated = [m for m in self.modalities if m != "text"] if config.gate_type != "none" else []
        self.gates = nn.ModuleDict({m: SpeederModalityGate(config) for m in gated})
        self.layers = nn.ModuleList(
            [SpeederMoMELayer(config, routed=True) for _ in range(config.num_modality_expert_layers)]
            + [SpeederMoMELayer(config, routed=False) for _ in range(config.num_multimodal_expert_layers)]
        )
        self.output_adapter = nn.Sequential(
            nn.Linear(config.fusion_hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def forward(self, features: dict[str, torch.Tensor | None], modality_mask: torch.Tensor) -> torch.Tensor:
        """features: modality → `(num_items, feature_size)` or None; modality_mask `(num_items, 3)` bool in the order
        `("text", "vision", "id")`. Returns `(num_items, hidden_size)`."""
        present = torch.stack([modality_mask[:, MODALITIES.index(m)] for m in self.modalities], dim=1).bool()
        if not present.any(dim=1).all():
            missing = (~present.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"Items at placeholder positions {missing[:10]} have none of the model's modalities "
                f"{self.modalities} present: every item needs at least one."
            )
        tokens = []
        for slot, modality in enumerate(self.modalities):
            feature = features.get(modality)
            if feature is None:
                if present[:, slot].any():
                    raise ValueError(f"modality_mask marks {modality!r} present but no {modality}_features were given.")
                feature = torch.zeros(
                    present.shape[0], self.adapters[modality].in_features, device=present.device,
                    dtype=self.adapters[modality].weight.dtype,
                )
            token = self.adapters[modality](feature.to(self.adapters[modality].weight.dtype))
            if modality in self.gates:
                token = self.gates[modality](token)
            tokens.append(token)
        hidden_states = torch.stack(tokens, dim=1)
        for layer in self.layers:
            hidden_states = layer(hidden_states, present)
        weights = present.unsqueeze(-1).to(hidden_states.dtype)
        pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)
        return self.output_adapter(pooled)


class SpeederPreTrainedModel(PreTrainedModel):
    config: SpeederConfig
    config_class = SpeederConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SpeederModalityGate):
            if module.gate_type == "tanh":
                init.zeros_(module.weight)
                init.zeros_(module.bias)
            else:
                init.normal_(module.weight, std=self.config.text_config.initializer_range)
                init.ones_(module.bias)


class SpeederModel(SpeederPreTrainedModel):
    """Item encoder + Position Prompt Learning table + backbone decoder, without the LM head.

    Item inputs arrive flattened over the batch in placeholder order (row-major over `<item>` tokens), either as
    modality features (`text_features`, `vision_features`, `id_features` with `modality_mask`) or as precomputed
    `item_embeddings` from [`SpeederForSequentialRec.encode_items`]. `history_positions` gives each item its PPL
    position 1..n, or 0 for candidates and PPT items.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__(config)
        self.item_encoder = SpeederItemEncoder(config)
        self.history_position_embeddings = (
            nn.Embedding(config.max_history_length, config.hidden_size) if config.use_history_positions else None
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def encode_items(
        self,
        text_features: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        id_features: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One embedding per item, `(num_items, hidden_size)`, without history positions."""
        features = {"text": text_features, "vision": vision_features, "id": id_features}
        if modality_mask is None:
            num_items = next(f.shape[0] for f in features.values() if f is not None)
            device = next(f.device for f in features.values() if f is not None)
            modality_mask = torch.tensor([features[m] is not None for m in MODALITIES], device=device)
            modality_mask = modality_mask.expand(num_items, -1)
        return self.item_encoder(features, modality_mask)

    def add_history_positions(self, item_embeddings: torch.Tensor, history_positions: torch.Tensor | None):
        """Adds PPL row k-1 to items at history position k >= 1 (Eq. 17); items at position 0 are unchanged."""
        if self.history_position_embeddings is None or history_positions is None:
            return item_embeddings
        if history_positions.numel() and int(history_positions.max()) > self.config.max_history_length:
            raise ValueError(
                f"A history position {int(history_positions.max())} exceeds max_history_length "
                f"{self.config.max_history_length}: keep the most recent {self.config.max_history_length} items."
            )
        in_history = (history_positions > 0).unsqueeze(-1).to(item_embeddings.dtype)
        rows = (history_positions - 1).clamp(min=0)
        return item_embeddings + in_history * self.history_position_embeddings(rows).to(item_embeddings.dtype)

    def get_placeholder_mask(self, input_ids: torch.LongTensor, item_embeddings: torch.Tensor) -> torch.Tensor:
        """`(batch, seq_len, 1)` mask of the `<item>` tokens; raises when their count differs from the items given."""
        item_mask = input_ids == self.config.item_token_id
        num_tokens, num_items = int(item_mask.sum()), item_embeddings.shape[0]
        if num_tokens != num_items:
            raise ValueError(
                f"The prompts hold {num_tokens} <item> tokens but {num_items} items were given: pass one item per "
                "<item> token, in placeholder order."
            )
        return item_mask.unsqueeze(-1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        item_embeddings: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        id_features: torch.FloatTensor | None = None,
        modality_mask: torch.BoolTensor | None = None,
        history_positions: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SpeederModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        # Splice only where <item> tokens are present: generate() passes the item inputs again at every decode step.
        has_items = input_ids is not None and bool((input_ids == self.config.item_token_id).any())
        if has_items:
            if item_embeddings is None:
                if all(f is None for f in (text_features, vision_features, id_features)):
                    raise ValueError(
                        "The prompts hold <item> tokens but no items were given: pass item_embeddings or "
                        "text_features / vision_features / id_features with modality_mask."
                    )
                item_embeddings = self.encode_items(text_features, vision_features, id_features, modality_mask)
            item_embeddings = self.add_history_positions(item_embeddings, history_positions)
            item_mask = self.get_placeholder_mask(input_ids, item_embeddings)
            inputs_embeds = inputs_embeds.masked_scatter(item_mask, item_embeddings.to(inputs_embeds.dtype))

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return SpeederModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            item_embeddings=item_embeddings if has_items else None,
        )


class SpeederForSequentialRec(SpeederPreTrainedModel, GenerationMixin):
    """Speeder with the LM head: trains on the answer token, generates answers, and ranks candidate pools."""

    def __init__(self, config: SpeederConfig):
        super().__init__(config)
        self.model = SpeederModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.text_config.vocab_size, bias=False)
        self.loss_type = "ForCausalLM"
        input_embeddings = self.model.get_input_embeddings().weight
        embedding_name = next(n for n, p in self.model.language_model.named_parameters() if p is input_embeddings)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{embedding_name}"}
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def encode_items(
        self,
        text_features: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        id_features: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One-token item embeddings `(num_items, hidden_size)` for the item cache (no history positions)."""
        return self.model.encode_items(text_features, vision_features, id_features, modality_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        item_embeddings: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        id_features: torch.FloatTensor | None = None,
        modality_mask: torch.BoolTensor | None = None,
        history_positions: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> SpeederCausalLMOutputWithPast:
        r"""labels (`(batch, seq_len)`, -100 = ignored): next-token targets, shifted inside the loss."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            item_embeddings=item_embeddings,
            text_features=text_features,
            vision_features=vision_features,
            id_features=id_features,
            modality_mask=modality_mask,
            history_positions=history_positions,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return SpeederCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            item_embeddings=outputs.item_embeddings,
        )

    @torch.no_grad()
    def answer_logits(
        self, input_ids: torch.LongTensor, token_ids: list[int], attention_mask: torch.Tensor | None = None, **item_inputs
    ) -> torch.Tensor:
        """Logits `(batch, len(token_ids))` of the given answer tokens at each prompt's last real token, from one
        forward pass that projects only those positions and tokens (left or right padding both work)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden_states = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **item_inputs)[0]
        last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).long().argmax(-1)
        answer_states = hidden_states[torch.arange(hidden_states.shape[0], device=last.device), last]
        weights = self.lm_head.weight[torch.tensor(token_ids, device=answer_states.device)]
        return answer_states @ weights.T

    def score_candidates(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        num_candidates: int | None = None,
        **item_inputs,
    ) -> torch.Tensor:
        """Candidate scores `(batch, num_candidates)` from ONE forward pass: the logits of the candidate label tokens
        at the answer position (prompts end with "Answer:")."""
        if self.config.candidate_label_token_ids is None:
            raise ValueError("config.candidate_label_token_ids is unset: build the model with its tokenizer.")
        num_candidates = num_candidates or len(self.config.candidate_label_token_ids)
        token_ids = self.config.candidate_label_token_ids[:num_candidates]
        return self.answer_logits(input_ids, token_ids, attention_mask=attention_mask, **item_inputs)

    def prompt_builder(self, tokenizer) -> SpeederPromptBuilder:
        """The prompt builder this model was trained with, checked against the config's token ids."""
        builder = SpeederPromptBuilder(tokenizer, self.config.candidate_labels)
        if builder.item_token_id != self.config.item_token_id:
            raise ValueError(
                f"The tokenizer's <item> id {builder.item_token_id} differs from config.item_token_id "
                f"{self.config.item_token_id}: load the tokenizer saved with this model."
            )
        return builder


__all__ = ["SpeederForSequentialRec", "SpeederModel", "SpeederPreTrainedModel", "SpeederItemEncoder"]
