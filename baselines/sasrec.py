"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item history.

Also Speeder's sequential ID encoder E_s: its item-embedding table is the ID modality (the paper's MRC module).
"""

from dataclasses import dataclass

import torch
from torch import nn

from .base import BaselineConfig, SequentialRecommender, transformer_encoder


@dataclass
class SASRecConfig(BaselineConfig):
    """SASRec sizes; `loss_type` is `ce` (full softmax) or `bce` (one sampled negative per position)."""

    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    loss_type: str = "ce"


class SASRec(SequentialRecommender):
    """Item + learned position embeddings, LayerNorm, dropout, a causal Transformer; the last position predicts."""

    config_class = SASRecConfig

    def __init__(self, config: SASRecConfig, num_items: int):
        super().__init__(config, num_items)
        self.position_embedding = nn.Embedding(config.max_seq_length, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = transformer_encoder(config)
        self.apply(self._init_weights)

    def encode(self, histories: torch.LongTensor) -> torch.Tensor:
        """Per-position outputs `[B, L, d]`; position t sees only positions <= t."""
        length = histories.size(1)
        positions = torch.arange(length, device=histories.device).unsqueeze(0)
        hidden = self.item_embedding(self.to_rows(histories)) + self.position_embedding(positions)
        hidden = self.dropout(self.layer_norm(hidden))
        causal_mask = nn.Transformer.generate_square_subsequent_mask(length, device=histories.device)
        return self.encoder(hidden, mask=causal_mask, is_causal=True)
