"""PyTorch Speeder model: one multimodal soft token per item, spliced into a causal LM (arXiv 2511.05885)."""

import json
import os
from collections import Counter
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import cached_file, logging

from .configuration_speeder import MODALITIES, SpeederConfig
from .processing_speeder import SpeederProcessor
from .prompt_speeder import ITEM_TOKEN, SpeederPromptBuilder
from .retrieval_speeder import (
    RETRIEVERS, SASREC_RETRIEVER_FILE, SpeederSASRecRetriever, item_cache_scores, top_rows
)

logger = logging.get_logger(__name__)

ITEM_CACHE_FILE = "item_embeddings.safetensors"
ITEM_TABLE_FILE = "item_table.jsonl"
# transformers 5.24 renamed the key/value cache argument and output field from `past_key_values` to `cache`.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
ITEM_INPUTS = (
    "item_embeddings", "text_features", "vision_features", "id_features", "modality_mask", "history_positions",
    "item_rows", "user_features",
)


def _listed(values: list, limit: int = 20) -> str:
    """`values` for an error message: the first `limit`, then how many more."""
    more = f" (and {len(values) - limit} more)" if len(values) > limit else ""
    return f"{values[:limit]}{more}"


@dataclass
class SpeederModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `item_embeddings` (`(num_items, hidden_size)`): what was spliced in."""

    item_embeddings: torch.FloatTensor | None = None


@dataclass
class SpeederCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the `item_embeddings` that were spliced in; `loss` is on labelled tokens."""

    item_embeddings: torch.FloatTensor | None = None


def _spread(vectors: torch.Tensor) -> torch.Tensor:
    """Total variance of `vectors` `(n, d)` around their mean: the mean squared distance to the mean."""
    return (vectors - vectors.mean(0)).pow(2).sum(-1).mean()


def unit_rms(features: torch.Tensor) -> torch.Tensor:
    """Each row of `features` `(n, d)` scaled to unit root-mean-square: inputs from different encoders on one scale."""
    return features * torch.rsqrt(features.pow(2).mean(-1, keepdim=True) + 1e-12)


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

    A tanh gate starts with `A_tan = 0` and `b = config.gate_bias_init` (0, the paper's start, passes nothing and
    sends its adapter no gradient until `A_tan` grows; a small positive start passes `tanh(b)` of the modality from
    the first step); a ReLU gate starts open (bias 1), since a closed ReLU gate would never receive a gradient.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.gate_type = config.gate_type
        self.weight = nn.Parameter(torch.empty(config.fusion_hidden_size, config.fusion_hidden_size))
        self.bias = nn.Parameter(torch.empty(config.fusion_hidden_size))

    def activation(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The gate's value `act(A_tan e + b)`, `(num_items, d_f)`."""
        gate = nn.functional.linear(embeddings, self.weight, self.bias)
        return torch.tanh(gate) if self.gate_type == "tanh" else torch.relu(gate)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.activation(embeddings) * embeddings


class SpeederItemEncoder(nn.Module):
    """Multimodal Representation Compression: modality features → one LLM-width embedding per item (Eq. 1-10).

    Each feature is scaled to unit RMS (`config.normalize_features`), modality adapters `A_m` map it to `d_f`;
    non-text modalities pass a gate; MoME fuses the present
    modality tokens; their mean is mapped by the feed-forward adapter `A_f` to the LLM hidden size.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__()
        self.modalities = list(config.modalities)
        self.normalize_features = config.normalize_features
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

    def adapt(self, modality: str, feature: torch.Tensor) -> torch.Tensor:
        """`A_m` of one modality's features `(num_items, feature_size)` → `(num_items, d_f)`, before its gate."""
        feature = feature.to(self.adapters[modality].weight.dtype)
        return self.adapters[modality](unit_rms(feature) if self.normalize_features else feature)

    @torch.no_grad()
    def gate_openness(self, features: dict[str, torch.Tensor | None], modality_mask: torch.Tensor) -> dict[str, float]:
        """Per gated modality, the mean absolute gate value `|act(A_tan e + b)|` over the items it is present for and
        the `d_f` channels: 0 = shut, 1 = fully open (a ReLU gate may exceed 1). Modalities absent from every item
        are left out."""
        openness = {}
        for modality, gate in self.gates.items():
            rows = modality_mask[:, MODALITIES.index(modality)].bool()
            if features.get(modality) is not None and rows.any():
                values = gate.activation(self.adapt(modality, features[modality][rows]))
                openness[modality] = values.abs().mean().item()
        return openness

    def forward(
        self, features: dict[str, torch.Tensor | None], modality_mask: torch.Tensor, open_gates: bool = False
    ) -> torch.Tensor:
        """features: modality → `(num_items, feature_size)` or None; modality_mask `(num_items, 3)` bool in the order
        `("text", "vision", "id")`; `open_gates` passes gated modalities through unchanged, as a fully open gate
        would. Returns `(num_items, hidden_size)` in the weights' dtype, also under autocast."""
        present = torch.stack([modality_mask[:, MODALITIES.index(m)] for m in self.modalities], dim=1).bool()
        if not present.any(dim=1).all():
            missing = (~present.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"Items at placeholder positions {missing[:10]} have none of the model's modalities "
                f"{self.modalities} present: every item needs at least one."
            )
        # full precision under autocast: the encoder is cheap, and its gates and adapters learn unreliably in bf16
        with torch.autocast(present.device.type, enabled=False):
            tokens = []
            for slot, modality in enumerate(self.modalities):
                feature = features.get(modality)
                if feature is None:
                    if present[:, slot].any():
                        raise ValueError(
                            f"modality_mask marks {modality!r} present but no {modality}_features were given."
                        )
                    feature = torch.zeros(
                        present.shape[0], self.adapters[modality].in_features, device=present.device,
                        dtype=self.adapters[modality].weight.dtype,
                    )
                token = self.adapt(modality, feature)
                if modality in self.gates and not open_gates:
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
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SpeederModalityGate):
            if module.gate_type == "tanh":
                init.zeros_(module.weight)
                init.constant_(module.bias, self.config.gate_bias_init)
            else:
                init.normal_(module.weight, std=self.config.text_config.initializer_range)
                init.ones_(module.bias)


class SpeederModel(SpeederPreTrainedModel):
    """Item encoder + Position Prompt Learning table + backbone decoder, without the LM head.

    Item inputs arrive flattened over the batch in placeholder order (row-major over `<item>` tokens), either as
    modality features (`text_features`, `vision_features`, `id_features` with `modality_mask`) or as precomputed
    `item_embeddings` from [`SpeederForSequentialRec.encode_items`]. `history_positions` gives each item its PPL
    position 1..n, or 0 for candidates and PPT items. With `item_rows` `(num_placeholders,)` the item inputs hold one
    row per distinct item (each encoded once) and placeholder k reads row `item_rows[k]`. With `config.user_token`,
    `user_features` `(batch, user_feature_size)` fill each prompt's `<user>` placeholder through `user_projector`.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__(config)
        self.item_encoder = SpeederItemEncoder(config)
        self.history_position_embeddings = (
            nn.Embedding(config.max_history_length, config.hidden_size) if config.use_history_positions else None
        )
        self.user_projector = nn.Sequential(
            nn.Linear(config.user_feature_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        ) if config.user_token else None
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
        open_gates: bool = False,
    ) -> torch.Tensor:
        """One embedding per item, `(num_items, hidden_size)`, without history positions."""
        features = {"text": text_features, "vision": vision_features, "id": id_features}
        if modality_mask is None:
            num_items = next(f.shape[0] for f in features.values() if f is not None)
            device = next(f.device for f in features.values() if f is not None)
            modality_mask = torch.tensor([features[m] is not None for m in MODALITIES], device=device)
            modality_mask = modality_mask.expand(num_items, -1)
        return self.item_encoder(features, modality_mask, open_gates=open_gates)

    @torch.no_grad()
    def align_item_embeddings(
        self,
        text_features: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        id_features: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Data-dependent initialisation of the output adapter `A_f`: shifts and scales its last layer so that the
        embeddings of the given items (a sample of all items, `(num_items, <m>_feature_size)` features) have the mean
        and the total variance around the mean of the backbone's input token embeddings.

        Why: the backbone's attention only works on vectors that look like its tokens. Soft tokens with the tokens'
        mean and spread learn to copy a history item within 60 steps on SmolLM2; zero-mean random vectors of the same
        norm, or a fresh encoder's output, stay at chance. When every given modality is behind a closed gate (a
        zero-init tanh gate on an ID-only run) all items encode alike, and the spread is measured with the gates open.
        Returns the applied `scale` and the matched statistics (`_match_token_statistics`).
        """
        least_spread = 1e-6 * _spread(self.get_input_embeddings().weight.float())
        was_training = self.item_encoder.training
        self.item_encoder.eval()
        features = (text_features, vision_features, id_features, modality_mask)
        try:
            items = self.encode_items(*features).float()
            if items.shape[0] < 2:
                raise ValueError(f"align_item_embeddings needs features of at least 2 items, got {items.shape[0]}.")
            if not _spread(items) > least_spread:
                items = self.encode_items(*features, open_gates=True).float()
        finally:
            self.item_encoder.train(was_training)
        if not _spread(items) > least_spread:
            raise ValueError("All given items encode to the same embedding: pass features of distinct items.")
        return self._match_token_statistics(self.item_encoder.output_adapter[-1], items)

    @torch.no_grad()
    def align_user_embeddings(self, user_features: torch.Tensor) -> dict[str, float]:
        """`align_item_embeddings` for the `<user>` token: shifts and scales `user_projector`'s last layer so that the
        given users' embeddings (`(num_users, user_feature_size)` features, at least 2 distinct) have the mean and
        spread of the backbone's token embeddings."""
        if self.user_projector is None:
            raise ValueError("This model has no user token (config.user_token is False).")
        users = self.encode_users(user_features).float()
        if users.shape[0] < 2 or not _spread(users) > 0:
            raise ValueError("align_user_embeddings needs the features of at least 2 distinct users.")
        return self._match_token_statistics(self.user_projector[-1], users)

    def _match_token_statistics(self, last: nn.Linear, outputs: torch.Tensor) -> dict[str, float]:
        """Rescales and shifts `last` (the layer that produced `outputs` `(n, hidden_size)`) so that its outputs get
        the mean and total variance around the mean of the backbone's input token embeddings."""
        tokens = self.get_input_embeddings().weight.float()
        token_mean, token_variance = tokens.mean(0), _spread(tokens)
        output_mean, output_variance = outputs.mean(0), _spread(outputs)
        scale = (token_variance / output_variance).sqrt()
        last.weight.mul_(scale.to(last.weight.dtype))
        # new output = scale * old output + (token_mean - scale * output_mean): the mean lands on the token mean
        last.bias.mul_(scale.to(last.bias.dtype)).add_((token_mean - scale * output_mean).to(last.bias.dtype))
        return {"scale": scale.item(), "token_mean_norm": token_mean.norm().item(),
                "token_variance": token_variance.item(), "variance_before": output_variance.item()}

    def encode_users(self, user_features: torch.Tensor) -> torch.Tensor:
        """The `<user>` soft token of each user, `(batch, user_feature_size)` → `(batch, hidden_size)`, in full
        precision as the item encoder."""
        weight = next(self.user_projector.parameters())  # also under PEFT's modules_to_save wrapper
        with torch.autocast(weight.device.type, enabled=False):
            features = user_features.to(weight.dtype)
            return self.user_projector(unit_rms(features) if self.config.normalize_features else features)

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

    def splice_items(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.FloatTensor,
        item_embeddings: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        id_features: torch.FloatTensor | None = None,
        modality_mask: torch.BoolTensor | None = None,
        history_positions: torch.LongTensor | None = None,
        item_rows: torch.LongTensor | None = None,
    ) -> tuple[torch.FloatTensor, torch.FloatTensor]:
        """`inputs_embeds` `(batch, seq_len, hidden)` with one item embedding per `<item>` placeholder (encoded from
        the features unless `item_embeddings` is given, PPL added to history items), and those item embeddings."""
        if item_embeddings is None:
            if all(f is None for f in (text_features, vision_features, id_features)):
                raise ValueError(
                    "The prompts hold <item> tokens but no items were given: pass item_embeddings or "
                    "text_features / vision_features / id_features with modality_mask."
                )
            item_embeddings = self.encode_items(text_features, vision_features, id_features, modality_mask)
        if item_rows is not None:  # one row per distinct item, encoded once: one per placeholder from here
            if item_rows.numel():
                low, high = torch.stack(torch.aminmax(item_rows)).tolist()  # one host sync
                if not 0 <= low <= high < len(item_embeddings):
                    raise ValueError(
                        f"item_rows must index the {len(item_embeddings)} given items, got values in {low}..{high}."
                    )
            item_embeddings = item_embeddings[item_rows.to(item_embeddings.device)]
        item_embeddings = self.add_history_positions(item_embeddings, history_positions)
        item_mask = self.get_placeholder_mask(input_ids, item_embeddings)
        return inputs_embeds.masked_scatter(item_mask, item_embeddings.to(inputs_embeds.dtype)), item_embeddings

    def splice_users(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.FloatTensor, user_features: torch.FloatTensor | None
    ) -> torch.FloatTensor:
        """`inputs_embeds` with each prompt's `<user>` placeholder replaced by its user's soft token; unchanged for a
        model without a user token."""
        if self.user_projector is None:
            return inputs_embeds
        user_mask = input_ids == self.config.user_token_id
        per_prompt = user_mask.sum(-1).tolist()  # one host sync
        if not any(per_prompt):
            return inputs_embeds
        if user_features is None:
            raise ValueError("The prompts hold <user> tokens but no user_features were given: pass one row of "
                             "user features per prompt (the processor computes them with its user encoder).")
        if set(per_prompt) != {1} or user_features.shape[0] != input_ids.shape[0]:
            raise ValueError(f"Each of the {input_ids.shape[0]} prompts needs exactly one <user> token and one row of "
                             f"user_features; got {sum(per_prompt)} tokens and {user_features.shape[0]} rows.")
        users = self.encode_users(user_features.to(inputs_embeds.device)).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(user_mask.unsqueeze(-1), users)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        item_embeddings: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        id_features: torch.FloatTensor | None = None,
        modality_mask: torch.BoolTensor | None = None,
        history_positions: torch.LongTensor | None = None,
        item_rows: torch.LongTensor | None = None,
        user_features: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> SpeederModelOutputWithPast:
        """`cache` is the key/value cache; `past_key_values` is its name before transformers 5.24. `item_rows`
        `(num_placeholders,)`: the row of the item inputs each `<item>` placeholder reads (default: one row each)."""
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        # Splice only where <item> tokens are present. A decode step gets no item inputs (see
        # `prepare_inputs_for_generation`): an `<item>` token the model generated is embedded as a plain token.
        has_items = input_ids is not None and bool((input_ids == self.config.item_token_id).any())
        item_inputs = (item_embeddings, text_features, vision_features, id_features)
        decoding = cache is not None and cache.get_seq_length() > 0
        has_items = has_items and not (decoding and all(x is None for x in item_inputs))
        if has_items:
            inputs_embeds, item_embeddings = self.splice_items(
                input_ids, inputs_embeds, item_embeddings, text_features, vision_features, id_features,
                modality_mask, history_positions, item_rows,
            )
        if input_ids is not None and not decoding:
            inputs_embeds = self.splice_users(input_ids, inputs_embeds, user_features)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        return SpeederModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            item_embeddings=item_embeddings if has_items else None,
        )


@dataclass
class SpeederItemCache:
    """The one-token embeddings of known items: `embeddings` `(num_items, hidden_size)`, row i is `item_ids[i]`.

    Stored beside the weights as `item_embeddings.safetensors` (key `item_embeddings`, the encoding modalities in the
    metadata) and `item_table.jsonl` (one `{"item_id", "title"}` per row), so that a model folder recommends by item
    id without any feature encoder. Item ids are strings.
    """

    item_ids: list[str]
    titles: list[str | None]
    embeddings: torch.Tensor
    modalities: list[str]
    rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.item_ids = [str(item_id) for item_id in self.item_ids]
        if len(self.titles) != len(self.item_ids) or self.embeddings.shape[0] != len(self.item_ids):
            raise ValueError(
                f"The item cache needs one title and one embedding row per item id: got {len(self.item_ids)} ids, "
                f"{len(self.titles)} titles and {self.embeddings.shape[0]} rows."
            )
        self.rows = {item_id: row for row, item_id in enumerate(self.item_ids)}
        if len(self.rows) != len(self.item_ids):
            repeated = [item_id for item_id, count in Counter(self.item_ids).items() if count > 1]
            raise ValueError(f"The item cache holds repeated item ids {repeated[:10]}.")

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id) -> bool:
        return str(item_id) in self.rows

    def rows_of(self, item_ids: list) -> list[int]:
        """Cache rows of `item_ids`; raises ValueError naming every id the cache does not hold."""
        unknown = [item_id for item_id in dict.fromkeys(item_ids) if str(item_id) not in self.rows]
        if unknown:
            more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
            raise ValueError(
                f"Unknown item ids {unknown[:20]}{more}: the item cache holds {len(self)} items (see "
                f"{ITEM_TABLE_FILE}); encode new items with model.add_items(...)."
            )
        return [self.rows[str(item_id)] for item_id in item_ids]

    def add(self, item_ids: list[str], titles: list[str | None], embeddings: torch.Tensor):
        """Appends items; raises ValueError naming ids the cache already holds."""
        known = [item_id for item_id in item_ids if item_id in self.rows]
        if known:
            raise ValueError(f"Item ids {known[:20]} are already in the item cache: give new items new ids.")
        grown = SpeederItemCache(self.item_ids + list(item_ids), self.titles + list(titles),
                                 torch.cat([self.embeddings, embeddings.to(self.embeddings.dtype)]), self.modalities)
        self.item_ids, self.titles, self.embeddings, self.rows = grown.item_ids, grown.titles, grown.embeddings, grown.rows

    def save(self, folder: str | os.PathLike):
        """Writes `item_embeddings.safetensors` and `item_table.jsonl` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {"modalities": ",".join(self.modalities), "num_items": str(len(self))}
        save_file({"item_embeddings": self.embeddings.detach().cpu().contiguous()}, str(folder / ITEM_CACHE_FILE),
                  metadata=metadata)
        with open(folder / ITEM_TABLE_FILE, "w", encoding="utf-8") as handle:
            for item_id, title in zip(self.item_ids, self.titles):
                handle.write(json.dumps({"item_id": item_id, "title": title}, ensure_ascii=False) + "\n")

    @classmethod
    def from_files(cls, embeddings_file: str | os.PathLike, table_file: str | os.PathLike) -> "SpeederItemCache":
        """Reads the two files that `save` writes."""
        with safe_open(str(embeddings_file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        embeddings = load_file(str(embeddings_file))["item_embeddings"]
        with open(table_file, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        modalities = [m for m in metadata.get("modalities", "").split(",") if m]
        return cls([row["item_id"] for row in rows], [row.get("title") for row in rows], embeddings, modalities)


class SpeederForSequentialRec(SpeederPreTrainedModel, GenerationMixin):
    """Speeder with the LM head: trains on the answer token, generates answers, and ranks candidate pools.

    From an exported folder, `recommend` ranks items by id: the folder's processor (`get_processor`) writes the prompts
    over the item cache (both loaded on first use), `score_candidates` scores them; `add_items` encodes cold-start
    items into that cache.
    """

    def __init__(self, config: SpeederConfig):
        super().__init__(config)
        self.model = SpeederModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.text_config.vocab_size, bias=False)
        self.loss_type = "ForCausalLM"
        input_embeddings = self.model.get_input_embeddings().weight
        embedding_name = next(n for n, p in self.model.language_model.named_parameters() if p is input_embeddings)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{embedding_name}"}
        self._item_cache: SpeederItemCache | None = None
        self._processor: SpeederProcessor | None = None  # of the model's folder, built on first use
        self.post_init()

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        """Item inputs go to the prefill step only; decode steps reuse the cache, whatever token was generated."""
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in ITEM_INPUTS:
                model_inputs.pop(key, None)
        return model_inputs

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
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        item_embeddings: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        id_features: torch.FloatTensor | None = None,
        modality_mask: torch.BoolTensor | None = None,
        history_positions: torch.LongTensor | None = None,
        item_rows: torch.LongTensor | None = None,
        user_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> SpeederCausalLMOutputWithPast:
        r"""labels (`(batch, seq_len)`, -100 = ignored): next-token targets, shifted inside the loss. `cache` is the
        key/value cache (`past_key_values` before transformers 5.24)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            past_key_values=past_key_values,  # `SpeederModel.forward` merges the two names
            inputs_embeds=inputs_embeds,
            item_embeddings=item_embeddings,
            text_features=text_features,
            vision_features=vision_features,
            id_features=id_features,
            modality_mask=modality_mask,
            history_positions=history_positions,
            item_rows=item_rows,
            user_features=user_features,
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
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            item_embeddings=outputs.item_embeddings,
        )

    def _grouped_hidden_states(self, input_ids, attention_mask, group_size: int, last, item_inputs):
        """Hidden states `(batch, seq_len - offset, hidden)` and `offset`: the longest prefix that every group of
        `group_size` consecutive rows shares (same tokens, mask and spliced embeddings) runs once per group, and its
        key/value cache, repeated over the group's rows, serves the rest of each row."""
        batch, length = input_ids.shape
        if batch % group_size:
            raise ValueError(f"group_size {group_size} must divide the batch size, got {batch} rows.")
        inputs_embeds = self.model.get_input_embeddings()(input_ids)
        user_features = item_inputs.pop("user_features", None)
        if bool((input_ids == self.config.item_token_id).any()):
            inputs_embeds, _ = self.model.splice_items(input_ids, inputs_embeds, **item_inputs)
        inputs_embeds = self.model.splice_users(input_ids, inputs_embeds, user_features)
        embeds = inputs_embeds.view(batch // group_size, group_size, length, -1)
        masks = attention_mask.view(batch // group_size, group_size, length)
        same = (embeds == embeds[:, :1]).all(-1).all(1) & (masks == masks[:, :1]).all(1)  # (groups, seq_len)
        shared = min(int(same.long().cumprod(-1).sum(-1).min()), int(last.min()))  # every answer lies after it
        if shared == 0:
            return self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                              use_cache=False)[0], 0
        prefix = self.model.language_model(inputs_embeds=embeds[:, 0, :shared], attention_mask=masks[:, 0, :shared],
                                           use_cache=True)
        cache = getattr(prefix, CACHE_NAME)
        cache.batch_repeat_interleave(group_size)
        rest = self.model.language_model(inputs_embeds=inputs_embeds[:, shared:], attention_mask=attention_mask,
                                         use_cache=True, **{CACHE_NAME: cache})
        return rest[0], shared

    @torch.no_grad()
    def answer_logits(
        self,
        input_ids: torch.LongTensor,
        token_ids: list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        group_size: int = 1,
        **item_inputs,
    ) -> torch.Tensor:
        """Logits at each prompt's last real token (the answer position), from one forward pass that projects only
        that position: `(batch, len(token_ids))` for the given answer tokens, or `(batch, vocab_size)` when
        `token_ids` is None (its argmax is the greedy answer). Left or right padding both work.

        `group_size > 1`: the rows come in consecutive groups of that many (e.g. one history with several candidate
        pools, left-padded); the prefix the groups share is computed once per group and the logits are the same."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).long().argmax(-1)
        if group_size > 1:
            hidden_states, offset = self._grouped_hidden_states(input_ids, attention_mask, group_size, last, item_inputs)
        else:
            hidden_states = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                       **item_inputs)[0]
            offset = 0
        answer_states = hidden_states[torch.arange(hidden_states.shape[0], device=last.device), last - offset]
        if token_ids is None:
            return self.lm_head(answer_states)
        weights = self.lm_head.weight[torch.tensor(token_ids, device=answer_states.device)]
        return answer_states @ weights.T

    def score_candidates(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        num_candidates: int | None = None,
        group_size: int = 1,
        **item_inputs,
    ) -> torch.Tensor:
        """Candidate scores `(batch, num_candidates)` from ONE forward pass: the logits of the candidate label tokens
        at the answer position (prompts end with "Answer:"). `group_size` as in `answer_logits`."""
        if self.config.candidate_label_token_ids is None:
            raise ValueError("config.candidate_label_token_ids is unset: build the model with its tokenizer.")
        num_candidates = num_candidates or len(self.config.candidate_label_token_ids)
        token_ids = self.config.candidate_label_token_ids[:num_candidates]
        return self.answer_logits(input_ids, token_ids, attention_mask=attention_mask, group_size=group_size,
                                  **item_inputs)

    def prompt_builder(self, tokenizer) -> SpeederPromptBuilder:
        """The prompt builder this model was trained with, checked against the config's token ids."""
        return SpeederProcessor.from_model_config(self.config, tokenizer).prompt_builder

    def get_processor(self, tokenizer=None) -> SpeederProcessor:
        """The model's [`SpeederProcessor`] over its item cache: for `tokenizer` (kept, and saved by
        `save_pretrained`), else the one of the model's folder."""
        if tokenizer is not None and (self._processor is None or self._processor.tokenizer is not tokenizer):
            self._processor = SpeederProcessor.from_model_config(self.config, tokenizer)
        if self._processor is None:
            if not self.name_or_path:
                raise ValueError("This model was not loaded from a folder: pass tokenizer=... to recommend().")
            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=True)
            self._processor = SpeederProcessor.from_model_config(self.config, tokenizer)
        users = None
        if self.config.user_token:
            users = self._required_sasrec_retriever(
                "This model reads a <user> token made by the SASRec model it was trained with",
                "load the exported folder, or call model.load_sasrec_retriever(folder).")
        return self._processor.with_items(self.item_cache, users=users)

    def load_item_cache(
        self, name_or_path: str | os.PathLike | None = None, revision: str | None = None
    ) -> SpeederItemCache | None:
        """Loads the item cache of a model folder or Hub repo (default: the one this model was loaded from) and
        makes it this model's cache; None when that folder has no cache."""
        source = str(name_or_path or self.name_or_path or "")
        if not source:
            return None
        files = [cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=False)
                 for name in (ITEM_CACHE_FILE, ITEM_TABLE_FILE)]
        if any(file is None for file in files):
            return None
        self._item_cache = SpeederItemCache.from_files(*files)
        return self._item_cache

    @property
    def item_cache(self) -> SpeederItemCache:
        """The item cache, loaded from the model's folder on first use."""
        if self._item_cache is None and self.load_item_cache() is None:
            raise ValueError(
                f"This model has no item cache ({ITEM_CACHE_FILE} + {ITEM_TABLE_FILE}) in {self.name_or_path!r}: "
                "load an exported Speeder folder, call model.load_item_cache(folder), or encode items with "
                "model.add_items(...)."
            )
        return self._item_cache

    def load_sasrec_retriever(
        self, name_or_path: str | os.PathLike | None = None, revision: str | None = None
    ) -> SpeederSASRecRetriever | None:
        """Loads the SASRec retriever (`retriever_sasrec.safetensors`) of a model folder or Hub repo (default: the one
        this model was loaded from) for `recommend(..., retriever="sasrec")`; None when that folder has none."""
        source = str(name_or_path or self.name_or_path or "")
        file = None
        if source:
            file = cached_file(source, SASREC_RETRIEVER_FILE, revision=revision,
                               _raise_exceptions_for_missing_entries=False)
        if file is None:
            return None
        retriever = SpeederSASRecRetriever.from_file(file)
        self.__dict__["_sasrec_retriever"] = retriever  # beside the model, not a submodule: kept out of its weights
        return retriever

    def _required_sasrec_retriever(self, need: str, fix: str) -> SpeederSASRecRetriever:
        """The SASRec retriever of the model's folder (loaded on first use), else a ValueError: `need`, then `fix`."""
        retriever = self.__dict__.get("_sasrec_retriever") or self.load_sasrec_retriever()
        if retriever is None:
            raise ValueError(f"{need} ({SASREC_RETRIEVER_FILE}) beside the weights, and {self.name_or_path!r} has "
                             f"none: {fix}")
        return retriever

    def available_retrievers(self) -> list[str]:
        """The retrievers `recommend` can use without candidates: `"item_cache"`, and `"sasrec"` when the model's
        folder ships a SASRec retriever."""
        has_sasrec = self.__dict__.get("_sasrec_retriever") is not None or self.load_sasrec_retriever() is not None
        return [name for name in RETRIEVERS if name != "sasrec" or has_sasrec]

    @staticmethod
    def _checked_history(history, name: str) -> list:
        if isinstance(history, (Set, Mapping)):
            raise ValueError(
                f"{name} is a {type(history).__name__}, which has no order, but history order matters: pass a list, "
                "oldest first."
            )
        if isinstance(history, (str, bytes)) or not hasattr(history, "__len__"):
            raise ValueError(f"{name} must be a list of item ids, got {type(history).__name__} {history!r}.")
        if not len(history):
            raise ValueError(f"{name} is empty: Speeder needs at least one item the user interacted with.")
        return list(history)

    def _checked_candidates(self, candidates, name: str) -> list:
        labels = self.config.candidate_labels
        if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__len__"):
            raise ValueError(f"{name} must be a list of item ids, got {type(candidates).__name__} {candidates!r}.")
        candidates = list(candidates)
        if not candidates:
            raise ValueError(f"{name} is empty: give 1 to {len(labels)} items to rank, or none to retrieve them.")
        if len(candidates) > len(labels):
            raise ValueError(
                f"{len(candidates)} candidates given in {name}, but the model ranks at most {len(labels)} at once (one "
                f"per candidate label {labels}): pass at most {len(labels)}."
            )
        repeated = [item_id for item_id, count in Counter(str(c) for c in candidates).items() if count > 1]
        if repeated:
            raise ValueError(f"{name} repeats {repeated}: each candidate must appear once.")
        return candidates

    def _retrieve(
        self, histories: list[list], names: list[str], num_candidates: int | None, retriever: str, exclude_history: bool
    ) -> list[list[str]]:
        """`retrieve` of checked histories; `names` name them in errors."""
        labels = self.config.candidate_labels
        if retriever not in RETRIEVERS:
            raise ValueError(
                f"Unknown retriever {retriever!r}: the available retrievers are {self.available_retrievers()}."
            )
        if num_candidates is not None and (
            not isinstance(num_candidates, int) or isinstance(num_candidates, bool)
            or not 1 <= num_candidates <= len(labels)
        ):
            raise ValueError(
                f"num_candidates must be an integer in 1..{len(labels)}, got {num_candidates!r}: Speeder re-ranks at "
                f"most {len(labels)} candidates in one pass (one per candidate label {list(labels)})."
            )
        cache = self.item_cache
        cache.rows_of([item_id for history in histories for item_id in history])  # one error naming every unknown id
        retrievable = torch.ones(len(cache), dtype=torch.bool)
        if retriever == "sasrec":
            sasrec = self._required_sasrec_retriever(
                "retriever='sasrec' needs a SASRec retriever",
                f"the available retrievers are {self.available_retrievers()} (hub_upload's export_run(..., "
                "sasrec_retriever=True) ships one).")
            known = [[item_id for item_id in history if str(item_id) in sasrec.rows] for history in histories]
            blind = [name for name, history in zip(names, known) if not history]
            if blind:
                raise ValueError(
                    f"The SASRec retriever knows none of the items of {blind} (items added after its training, with "
                    "add_items): use retriever='item_cache' for them."
                )
            if any(len(k) < len(h) for k, h in zip(known, histories)):
                logger.warning_once("The SASRec retriever reads only the history items it was trained on.")
            columns = [column for column, item_id in enumerate(sasrec.item_ids) if item_id in cache]
            rows = torch.tensor([cache.rows[sasrec.item_ids[column]] for column in columns], dtype=torch.long)
            scores = torch.full((len(histories), len(cache)), float("-inf"))
            scores[:, rows] = sasrec.score(known)[:, columns].cpu()
            retrievable = torch.zeros(len(cache), dtype=torch.bool)
            retrievable[rows] = True  # items added after SASRec's training have no score
        else:
            scores = item_cache_scores(cache.embeddings, [cache.rows_of(history) for history in histories])
        retrieved = []
        for name, history, row_scores in zip(names, histories, scores):
            allowed = retrievable.clone()
            if exclude_history:
                allowed[cache.rows_of(history)] = False
            available = int(allowed.sum())
            k = min(len(labels), available) if num_candidates is None else num_candidates
            left = f"{available} of the item cache's {len(cache)} items"
            left += " once the history is left out" if exclude_history else ""
            if available == 0:
                raise ValueError(
                    f"{name}: the {retriever!r} retriever has {left}, nothing to recommend: pass "
                    f"{'exclude_history=False or ' if exclude_history else ''}candidate_item_ids."
                )
            if k > available:
                raise ValueError(
                    f"{name}: the {retriever!r} retriever has only {left}, fewer than num_candidates={k}: pass "
                    f"num_candidates <= {available}."
                )
            retrieved.append([cache.item_ids[row] for row in top_rows(row_scores, k, allowed)])
        return retrieved

    @torch.no_grad()
    def retrieve(
        self,
        histories: list[list],
        num_candidates: int | None = None,
        retriever: str = "item_cache",
        exclude_history: bool = True,
    ) -> list[list[str]]:
        """The K items of the item cache that `recommend` re-ranks for each history, best first by the retriever.

        Args:
            histories: per user, the ids of the items they interacted with, oldest first.
            num_candidates: K, at most `len(config.candidate_labels)` (the prompt has one label per candidate);
                default: that many, or all the items left when fewer.
            retriever: `"item_cache"`: cosine between the mean cached embedding of the history and every cached item;
                `"sasrec"`: the scores of the SASRec ID model exported with the folder, over the cached items it knows.
            exclude_history: leave out the items of the history.
        Returns:
            per history, K item ids.
        """
        names = [f"histories[{index}]" for index in range(len(histories))]
        histories = [self._checked_history(history, name) for history, name in zip(histories, names)]
        return self._retrieve(histories, names, num_candidates, retriever, exclude_history)

    def _rank(self, histories: list[list], candidate_lists: list[list], tokenizer=None) -> list[list[tuple]]:
        """Scores each history's candidates in ONE forward pass over right-padded prompts; per history,
        `[(item_id, score), ...]` best first. The instruction every prompt starts with runs once for the batch, its
        keys and values repeated over the rows (`answer_logits`' `group_size`)."""
        cache = self.item_cache
        inputs = self.get_processor(tokenizer)(histories=histories, candidates=candidate_lists).to(self.device)
        inputs["item_embeddings"] = inputs["item_embeddings"].to(self.dtype)
        was_training = self.training
        self.eval()
        try:
            scores = self.score_candidates(**inputs, num_candidates=max(len(c) for c in candidate_lists),
                                           group_size=len(histories)).float().cpu()
        finally:
            self.train(was_training)
        rankings = []
        for history, candidates, row_scores in zip(histories, candidate_lists, scores):
            row_scores = row_scores[: len(candidates)]
            if not torch.isfinite(row_scores).all():
                items = list(dict.fromkeys(history[-self.config.max_history_length:] + candidates))
                finite = torch.isfinite(cache.embeddings[cache.rows_of(items)]).all(dim=-1).tolist()
                bad = [item for item, ok in zip(items, finite) if not ok]
                if bad:
                    raise ValueError(
                        f"The cached embeddings of items {_listed(bad)} are not finite (NaN or inf), so neither are "
                        "the scores: rebuild the item cache from finite features (model.add_items checks them), or "
                        "leave these items out."
                    )
                raise ValueError(
                    f"The scores of {candidates} are not finite although every item's embedding is: the model's "
                    f"weights give non-finite logits in {self.dtype}; check the weights for NaN or inf."
                )
            row_scores = row_scores.tolist()
            order = sorted(range(len(candidates)), key=lambda i: -row_scores[i])
            rankings.append([(candidates[i], row_scores[i]) for i in order])
        return rankings

    def _recommend(
        self, histories, candidate_lists, names: list[str], candidate_names: list[str], top_k: int | None, tokenizer,
        num_candidates: int | None, retriever: str, exclude_history: bool, batch_size: int,
    ) -> list[list[tuple]]:
        """`recommend_batch` with `names` / `candidate_names` naming each history / candidate list in errors."""
        histories = [self._checked_history(history, name) for history, name in zip(histories, names)]
        if candidate_lists is not None:
            if num_candidates is not None:
                raise ValueError(
                    f"num_candidates={num_candidates} is the number of items to retrieve when no candidates are "
                    "given: pass candidate_item_ids or num_candidates, not both."
                )
            candidate_lists = [self._checked_candidates(c, name) for c, name in zip(candidate_lists, candidate_names)]
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        cache = self.item_cache
        if top_k is not None and top_k > len(cache):
            raise ValueError(
                f"top_k={top_k} is above the catalogue size: the item cache holds {len(cache)} items; pass "
                f"top_k <= {len(cache)}."
            )
        if candidate_lists is None:
            candidate_lists = self._retrieve(histories, names, num_candidates, retriever, exclude_history)
            short = [name for name, c in zip(names, candidate_lists) if top_k is not None and top_k > len(c)]
            if short:
                labels = self.config.candidate_labels
                raise ValueError(
                    f"top_k={top_k} is above the {min(len(c) for c in candidate_lists)} candidates retrieved for "
                    f"{short} and re-ranked (at most one per candidate label {list(labels)}): pass top_k <= "
                    f"{min(len(c) for c in candidate_lists)}, or give candidate_item_ids."
                )
        else:
            cache.rows_of([item_id for h, c in zip(histories, candidate_lists) for item_id in h + c])  # names them all
        rankings = []
        for start in range(0, len(histories), batch_size):
            stop = start + batch_size
            rankings += self._rank(histories[start:stop], candidate_lists[start:stop], tokenizer)
        return [ranking[:top_k] for ranking in rankings]

    @torch.no_grad()
    def recommend(
        self,
        history_item_ids: list,
        candidate_item_ids: list | None = None,
        top_k: int | None = None,
        tokenizer=None,
        num_candidates: int | None = None,
        retriever: str = "item_cache",
        exclude_history: bool = True,
    ) -> list[tuple[str, float]]:
        """Ranks items for a user from ONE forward pass over the item cache: the given candidates, or, without them,
        `num_candidates` items retrieved from the whole catalogue (the item cache).

        Args:
            history_item_ids: a list of the ids of the items the user interacted with, oldest first; beyond
                `config.max_history_length` only the most recent are kept.
            candidate_item_ids: distinct ids to rank, at most `len(config.candidate_labels)`; None retrieves them.
            top_k: keep the `top_k` best; None keeps all the ranked candidates. It may not exceed the catalogue size
                nor, without candidates, the number of items retrieved.
            tokenizer: the model's tokenizer; default: loaded from the model's folder.
            num_candidates: without candidates, K, the number of items retrieved and re-ranked. The prompt holds one
                label per candidate, so K is at most `len(config.candidate_labels)` (5 by default), which is also the
                default (fewer when fewer items are left to retrieve).
            retriever: without candidates, how they are retrieved: `"item_cache"` (cosine between the mean cached
                embedding of the history and every cached item; needs nothing else) or `"sasrec"` (the SASRec ID model
                shipped with the folder as `retriever_sasrec.safetensors`); see `available_retrievers()`.
            exclude_history: without candidates, never retrieve items of the history.
        Returns:
            `[(item_id, score), ...]`, best first (ties keep the candidates' order, retrieved ones in retriever order);
            a score is the logit of the candidate's label at the answer position, comparable within one call.
        """
        candidate_lists = None if candidate_item_ids is None else [candidate_item_ids]
        return self._recommend(
            [history_item_ids], candidate_lists, ["history_item_ids"], ["candidate_item_ids"], top_k, tokenizer,
            num_candidates, retriever, exclude_history, batch_size=1,
        )[0]

    @torch.no_grad()
    def recommend_batch(
        self,
        histories: list[list],
        candidate_item_ids: list[list] | None = None,
        top_k: int | None = None,
        tokenizer=None,
        num_candidates: int | None = None,
        retriever: str = "item_cache",
        exclude_history: bool = True,
        batch_size: int = 32,
    ) -> list[list[tuple[str, float]]]:
        """`recommend` for several users: one forward pass per `batch_size` histories (prompts right-padded).

        Args:
            histories: per user, a list of item ids, oldest first.
            candidate_item_ids: per user, the candidates to rank; None retrieves them (see `recommend`).
            top_k, tokenizer, num_candidates, retriever, exclude_history: as in `recommend`.
            batch_size: histories per forward pass.
        Returns:
            per user, `[(item_id, score), ...]`, best first.
        """
        if isinstance(histories, (str, bytes, Set, Mapping)) or not hasattr(histories, "__len__"):
            raise ValueError(
                f"histories must be a list of histories (each a list of item ids, oldest first), got "
                f"{type(histories).__name__} {histories!r}."
            )
        if not len(histories):
            raise ValueError("histories is empty: give at least one history.")
        names = [f"histories[{index}]" for index in range(len(histories))]
        if candidate_item_ids is not None and (
            isinstance(candidate_item_ids, (str, bytes)) or len(candidate_item_ids) != len(histories)
        ):
            raise ValueError(
                f"candidate_item_ids must hold one list of candidates per history ({len(histories)}), got "
                f"{candidate_item_ids!r}."
            )
        return self._recommend(
            list(histories), None if candidate_item_ids is None else list(candidate_item_ids), names,
            [f"candidate_item_ids[{index}]" for index in range(len(histories))], top_k, tokenizer, num_candidates,
            retriever, exclude_history, batch_size,
        )

    @torch.no_grad()
    def add_items(
        self,
        item_ids: list,
        titles: list[str | None] | None = None,
        text_features: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        id_features: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encodes new (cold-start) items into the item cache, without training, so `recommend` can rank them at
        once; `save_pretrained` writes the grown cache. Features are finite `(num_items, <m>_feature_size)` tensors or
        numpy arrays from the same feature encoders as the training data, for the cache's modalities (or a subset);
        `modality_mask` `(num_items, 3)` marks absent ones per item. Returns the new embeddings
        `(num_items, hidden_size)`."""
        if isinstance(item_ids, (str, bytes)):
            raise ValueError(f"item_ids must be a list of item ids, got the string {item_ids!r}.")
        ids = [str(item_id) for item_id in item_ids]
        titles = [None] * len(ids) if titles is None else list(titles)
        if not ids:
            raise ValueError("item_ids is empty.")
        repeated = [item_id for item_id, count in Counter(ids).items() if count > 1]
        if repeated:
            raise ValueError(f"item_ids repeats {repeated}: give each new item once.")
        if len(titles) != len(ids):
            raise ValueError(f"{len(titles)} titles for {len(ids)} item_ids: give one title (or None) per item.")
        features = {"text": text_features, "vision": vision_features, "id": id_features}
        features = {m: None if f is None else torch.as_tensor(f) for m, f in features.items()}  # numpy too
        given = [m for m in MODALITIES if features[m] is not None]
        cache = self._item_cache if self._item_cache is not None else self.load_item_cache()
        allowed = (cache.modalities if cache is not None and cache.modalities else None) or self.config.modalities
        if not given or set(given) - set(allowed):
            raise ValueError(
                f"Give features of the modalities {allowed} (those the item cache was encoded from), got "
                f"{given or 'none'}."
            )
        for modality in given:
            expected = (len(ids), self.config.feature_size(modality))
            if tuple(features[modality].shape) != expected:
                raise ValueError(
                    f"{modality}_features has shape {tuple(features[modality].shape)}, expected {expected} "
                    f"({len(ids)} items x {modality}_feature_size)."
                )
            finite = torch.isfinite(features[modality]).all(dim=-1)
            if not finite.all():
                bad = [ids[i] for i in (~finite).nonzero().flatten().tolist()]
                raise ValueError(
                    f"{modality}_features of items {_listed(bad)} hold non-finite values (NaN or inf): fix those rows; "
                    f"an item without {modality} features takes zeros and False in its modality_mask column."
                )
        if modality_mask is not None:
            modality_mask = torch.as_tensor(modality_mask)
            expected = (len(ids), len(MODALITIES))
            if tuple(modality_mask.shape) != expected:
                raise ValueError(
                    f"modality_mask has shape {tuple(modality_mask.shape)}, expected {expected}: one row per item, "
                    f"one column per modality {list(MODALITIES)}, True where the item has that modality."
                )
        if cache is not None:
            known = [item_id for item_id in ids if item_id in cache]
            if known:
                raise ValueError(f"Item ids {known[:20]} are already in the item cache: give new items new ids.")
        inputs = {f"{m}_features": features[m].to(device=self.device, dtype=self.dtype) for m in given}
        if modality_mask is not None:
            inputs["modality_mask"] = modality_mask.to(self.device)
        was_training = self.training
        self.eval()
        try:
            embeddings = self.encode_items(**inputs).float().cpu()
        finally:
            self.train(was_training)
        finite = torch.isfinite(embeddings).all(dim=-1)
        if not finite.all():
            bad = [ids[i] for i in (~finite).nonzero().flatten().tolist()]
            raise ValueError(
                f"The item encoder gave non-finite embeddings for items {_listed(bad)} from finite features: the "
                f"features overflow {self.dtype} or the model's weights hold NaN or inf; nothing was added."
            )
        if cache is None:
            self._item_cache = SpeederItemCache(ids, titles, embeddings, list(self.config.modalities))
        else:
            cache.add(ids, titles, embeddings)
        return embeddings

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus what serving the folder needs, so that it recommends on its own:
        the item cache (grown by `add_items`), the processor with its tokenizer, the SASRec retriever and the pipeline file that
        `config.custom_pipelines` names, each from this model or else from the folder it was loaded from; and the
        exported Gradio app (`app.py`, `item_encoders.json`) of that folder."""
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if is_main_process:
            folder = Path(save_directory)
            source = str(self.name_or_path or "")
            cache = self._item_cache if self._item_cache is not None else self.load_item_cache()
            if cache is not None:
                cache.save(folder)
            if self._processor is None and source and cached_file(
                source, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False
            ):
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
                if tokenizer.convert_tokens_to_ids(ITEM_TOKEN) == self.config.item_token_id:  # a Speeder folder's
                    self._processor = SpeederProcessor.from_model_config(self.config, tokenizer)
            if self._processor is not None:
                self._processor.save_pretrained(folder)  # the tokenizer and processor_config.json
            copied = ["app.py", "item_encoders.json"]
            retriever = self.__dict__.get("_sasrec_retriever")
            if retriever is not None:
                retriever.save(folder / SASREC_RETRIEVER_FILE)
            else:
                copied.append(SASREC_RETRIEVER_FILE)
            pipeline_files = [f"{entry['impl'].rsplit('.', 1)[0]}.py"
                              for entry in (getattr(self.config, "custom_pipelines", None) or {}).values()]
            for name in pipeline_files + copied:
                # A pipeline file lies beside this module (the repository's package, or transformers' module cache
                # when the pipeline was loaded from there), else in the source folder like the other files.
                found = Path(__file__).with_name(name) if name in pipeline_files else None
                if (found is None or not found.is_file()) and source:
                    found = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
                target = folder / name
                if found is not None and Path(found).is_file():
                    if not (target.exists() and target.samefile(found)):
                        target.write_bytes(Path(found).read_bytes())
                elif name in pipeline_files and not target.is_file():
                    logger.warning(
                        f"config.custom_pipelines names {name}, but neither this model's code nor {source!r} has it: "
                        f"{folder} cannot serve transformers.pipeline(...) until you copy {name} there."
                    )
        if push_to_hub:  # push_to_hub saves again, into a folder it uploads whole
            hub_kwargs.setdefault("repo_id", Path(save_directory).name)
            self.push_to_hub(token=kwargs.get("token"), **hub_kwargs)


__all__ = [
    "ITEM_CACHE_FILE",
    "ITEM_TABLE_FILE",
    "SpeederForSequentialRec",
    "SpeederItemCache",
    "SpeederModel",
    "SpeederPreTrainedModel",
    "SpeederItemEncoder",
]
