"""GRU4Rec (Hidasi et al., ICLR 2016; Tan et al., DLRS 2016): a GRU over the item history."""

from dataclasses import dataclass

import torch
from torch import nn

from .base import BaselineConfig, SequentialRecommender


@dataclass
class GRU4RecConfig(BaselineConfig):
    """GRU4Rec sizes; `loss_type` is `ce` (full softmax) or `bce` (one sampled negative per position)."""

    n_layers: int = 1
    loss_type: str = "ce"


class GRU4Rec(SequentialRecommender):
    """Item embeddings, dropout, a GRU, a linear map back to the item space; the last real position predicts."""

    config_class = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig, num_items: int):
        super().__init__(config, num_items)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.hidden_size, config.hidden_size, num_layers=config.n_layers, batch_first=True)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        """Xavier initialisation as in RecBole's GRU4Rec: a N(0, 0.02) table barely moves a GRU at lr 1e-3."""
        if isinstance(module, nn.Embedding):
            nn.init.xavier_normal_(module.weight)
            module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.GRU):
            for name, weight in module.named_parameters():
                (nn.init.xavier_uniform_ if name.startswith("weight") else nn.init.zeros_)(weight)
        else:
            super()._init_weights(module)

    def encode(self, histories: torch.LongTensor) -> torch.Tensor:
        """Per-position states `[B, L, d]` of the GRU run over `histories [B, L]` (right-padded with -1)."""
        hidden, _ = self.gru(self.dropout(self.item_embedding(self.to_rows(histories))))
        return self.dense(hidden)
