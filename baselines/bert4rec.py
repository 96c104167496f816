"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained to fill in masked items."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .base import BaselineConfig, SequentialRecommender, transformer_encoder


@dataclass
class BERT4RecConfig(BaselineConfig):
    """BERT4Rec sizes; `mask_ratio` of the training items are masked (the target always is)."""

    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    mask_ratio: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1], got {self.mask_ratio}.")


class BERT4Rec(SequentialRecommender):
    """Bidirectional encoder with a mask token; predicts the next item at a mask appended after the history.

    Training (cloze): each item of a train sequence is masked with probability `mask_ratio` and its last item always
    is, so every training sequence also practises the inference-time layout.
    """

    config_class = BERT4RecConfig

    def __init__(self, config: BERT4RecConfig, num_items: int):
        super().__init__(config, num_items, num_extra_tokens=1)
        self.mask_row = num_items + 1
        self.position_embedding = nn.Embedding(config.max_seq_length, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = transformer_encoder(config)
        self.output_dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(num_items))
        self.apply(self._init_weights)

    @property
    def max_history_length(self) -> int:
        """One position is kept for the appended mask."""
        return self.config.max_seq_length - 1

    def encode_rows(self, rows: torch.LongTensor) -> torch.Tensor:
        """Embedding rows `[B, L]` (0 = padding, `mask_row` = mask) -> per-position outputs `[B, L, d]`."""
        positions = torch.arange(rows.size(1), device=rows.device).unsqueeze(0)
        hidden = self.dropout(self.layer_norm(self.item_embedding(rows) + self.position_embedding(positions)))
        hidden = self.encoder(hidden, src_key_padding_mask=rows == 0)
        return self.output_norm(F.gelu(self.output_dense(hidden)))

    def append_mask(self, histories: torch.LongTensor) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Rows `[B, L + 1]` with the mask token right after each history, and the mask positions `[B]`."""
        lengths = (histories >= 0).sum(1)
        rows = F.pad(self.to_rows(histories), (0, 1), value=0)
        rows[torch.arange(rows.size(0), device=rows.device), lengths] = self.mask_row
        return rows, lengths

    def forward(self, histories: torch.LongTensor) -> torch.Tensor:
        """`histories [B, L]` (right-padded with -1) -> the output at the appended mask `[B, d]`."""
        self.check_width(histories)
        rows, lengths = self.append_mask(histories)
        return self.gather_last(self.encode_rows(rows), lengths + 1)

    def item_logits(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return super().item_logits(sequence_output) + self.output_bias

    def score_candidates(self, histories: torch.LongTensor, candidates: torch.LongTensor) -> torch.Tensor:
        """`histories [B, L]`, `candidates [B, m]` -> `[B, m]` (dot product plus the item's output bias)."""
        return super().score_candidates(histories, candidates) + self.output_bias[candidates]

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy over all items at the masked positions of `batch["sequence"] [B, W]` (history + target)."""
        sequence = batch["sequence"]
        if sequence.size(1) > self.config.max_seq_length:
            raise ValueError(
                f"Train sequences must have at most {self.config.max_seq_length} items, got {sequence.size(1)}."
            )
        lengths = (sequence >= 0).sum(1)
        masked = (torch.rand(sequence.shape, device=sequence.device) < self.config.mask_ratio) & (sequence >= 0)
        masked[torch.arange(sequence.size(0), device=sequence.device), (lengths - 1).clamp(min=0)] = True
        rows = torch.where(masked, torch.full_like(sequence, self.mask_row), self.to_rows(sequence))
        hidden = self.encode_rows(rows)[masked]  # [K, d]
        return F.cross_entropy(self.item_logits(hidden), sequence[masked])
