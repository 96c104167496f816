"""What every ID-based baseline shares: the padded-history convention, the item table and candidate scoring.

Conventions (the same for every model, the trainer and the evaluator):

* items are the data set's `item_index` values `0..num_items-1`;
* a batch of histories is a `LongTensor [B, L]`, chronological and **right-padded** with `PADDING_VALUE` (-1),
  as `pad_histories` builds it; only the most recent `model.max_history_length` items are kept;
* embedding row 0 is the padding row and item `i` lives in row `i + 1` (BERT4Rec adds a mask row after the items).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

PADDING_VALUE = -1
LOSS_TYPES = ("ce", "bce")


@dataclass
class BaselineConfig:
    """Sizes shared by every baseline (the paper's embedding dimension 64)."""

    hidden_size: int = 64
    max_seq_length: int = 50
    dropout: float = 0.2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size < 1 or self.max_seq_length < 2:
            raise ValueError(
                f"hidden_size must be >= 1 and max_seq_length >= 2, got {self.hidden_size} and {self.max_seq_length}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}.")
        loss_type = getattr(self, "loss_type", None)
        if loss_type is not None and loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}.")


def pad_histories(histories: Sequence[Sequence[int]], max_length: int) -> torch.LongTensor:
    """Keep the last `max_length` items of each history and right-pad with `PADDING_VALUE`: `[B, L]`."""
    histories = [list(h)[-max_length:] if max_length > 0 else [] for h in histories]
    width = max(1, max((len(h) for h in histories), default=0))
    out = torch.full((len(histories), width), PADDING_VALUE, dtype=torch.long)
    for row, history in enumerate(histories):
        if history:
            out[row, : len(history)] = torch.as_tensor(history, dtype=torch.long)
    return out


def transformer_encoder(config) -> nn.TransformerEncoder:
    """The self-attention stack of SASRec and BERT4Rec (post-norm, GELU), `n_layers` deep."""
    layer = nn.TransformerEncoderLayer(
        d_model=config.hidden_size,
        nhead=config.n_heads,
        dim_feedforward=config.inner_size,
        dropout=config.dropout,
        activation="gelu",
        layer_norm_eps=config.layer_norm_eps,
        batch_first=True,
    )
    return nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)


class SequentialRecommender(nn.Module):
    """Base of the ID-based baselines: item table with a padding row, candidate scoring, the item-embedding export.

    Causal subclasses (SASRec, GRU4Rec) only define `encode(histories [B, L]) -> [B, L, d]`, the output at position
    t depending on items <= t. `calculate_loss(batch)` takes `batch["sequence"] [B, W]`, train sequences (history +
    target, right-padded, W <= max_history_length + 1), and predicts every item from the ones before it: one pass
    trains on every prefix of the sequence at once.
    """

    config_class = BaselineConfig

    def __init__(self, config: BaselineConfig, num_items: int, num_extra_tokens: int = 0):
        super().__init__()
        if num_items < 2:
            raise ValueError(f"A recommender needs at least 2 items, got num_items={num_items}.")
        self.config = config
        self.num_items = num_items
        # row 0 = padding, rows 1..num_items = items, then any extra tokens (BERT4Rec's mask)
        self.item_embedding = nn.Embedding(num_items + 1 + num_extra_tokens, config.hidden_size, padding_idx=0)

    @property
    def max_history_length(self) -> int:
        """How many of the most recent history items the model reads."""
        return self.config.max_seq_length

    def _init_weights(self, module: nn.Module):
        """RecBole's initialisation: N(0, initializer_range) for linear and embedding weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def encode(self, histories: torch.LongTensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, histories: torch.LongTensor) -> torch.Tensor:
        """`histories [B, L]` (right-padded with -1) -> the representation after the last item `[B, d]`."""
        self.check_width(histories)
        return self.gather_last(self.encode(histories), (histories >= 0).sum(1))

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-item loss at every position of `batch["sequence"] [B, W]`, averaged over the predicted items."""
        sequence = batch["sequence"]
        histories, targets = sequence[:, :-1], sequence[:, 1:]
        self.check_width(histories)
        predicted = targets >= 0  # right padding: a real target always has a real item before it
        return self.next_item_loss(self.encode(histories)[predicted], targets[predicted])

    def check_width(self, histories: torch.LongTensor):
        if histories.size(1) > self.max_history_length:
            raise ValueError(
                f"{type(self).__name__} reads at most {self.max_history_length} history items, got a batch of width "
                f"{histories.size(1)}: build it with pad_histories(histories, model.max_history_length)."
            )

    @staticmethod
    def to_rows(items: torch.LongTensor) -> torch.LongTensor:
        """Item indices (with -1 padding) to embedding rows (0 = padding)."""
        return items + 1

    @staticmethod
    def gather_last(output: torch.Tensor, lengths: torch.LongTensor) -> torch.Tensor:
        """`output [B, L, d]` at position `lengths - 1` of each row: `[B, d]` (position 0 for an empty history)."""
        index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, output.size(-1))
        return output.gather(1, index).squeeze(1)

    def item_embeddings(self) -> torch.Tensor:
        """The item table in `item_index` order, padding and special rows excluded: `[num_items, d]`."""
        return self.item_embedding.weight[1 : self.num_items + 1]

    def item_logits(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """Scores of every item: `[..., d] -> [..., num_items]`."""
        return sequence_output @ self.item_embeddings().T

    def score_candidates(self, histories: torch.LongTensor, candidates: torch.LongTensor) -> torch.Tensor:
        """Score each sample's candidate pool: `histories [B, L]`, `candidates [B, m]` -> `[B, m]` (higher = better)."""
        sequence_output = self.forward(histories)  # [B, d]
        return (self.item_embedding(self.to_rows(candidates)) * sequence_output.unsqueeze(1)).sum(-1)

    def next_item_loss(self, sequence_output: torch.Tensor, target: torch.LongTensor) -> torch.Tensor:
        """`ce`: full softmax over all items; `bce`: the target against one uniformly sampled other item.

        `sequence_output [B, d]`, `target [B]`.
        """
        if self.config.loss_type == "ce":
            return F.cross_entropy(self.item_logits(sequence_output), target)
        # a negative != target: shift a draw from the other num_items - 1 items past the target
        negative = torch.randint(0, self.num_items - 1, target.shape, device=target.device)
        negative = negative + (negative >= target).long()
        pos = (sequence_output * self.item_embedding(self.to_rows(target))).sum(-1)
        neg = (sequence_output * self.item_embedding(self.to_rows(negative))).sum(-1)
        return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
            neg, torch.zeros_like(neg)
        )
