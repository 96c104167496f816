"""Pop: a learned popularity score per item, the same for every history (the reference point of the ID models)."""

import dataclasses
from dataclasses import dataclass

import torch

from .base import BaselineConfig, SequentialRecommender


@dataclass
class PopConfig(BaselineConfig):
    """Pop's item table is one score per item, so `hidden_size` is always 1 (a shared `--hidden-size` is ignored)."""

    hidden_size: int = 1
    loss_type: str = "ce"


class Pop(SequentialRecommender):
    """Each item's score is one learned number; the history is ignored.

    Trained like the other baselines (full-softmax next-item loss at every position of the train windows), the
    scores approach the log frequency of each item as a next item, so HR@1 on a pool measures how far popularity
    alone goes. The one-column item table is the score and `encode` returns a constant 1 per position.
    """

    config_class = PopConfig

    def __init__(self, config: PopConfig, num_items: int):
        super().__init__(dataclasses.replace(config, hidden_size=1), num_items)
        self.apply(self._init_weights)

    def encode(self, histories: torch.LongTensor) -> torch.Tensor:
        """`histories [B, L]` → ones `[B, L, 1]`: an item's score does not depend on the history."""
        return torch.ones(*histories.shape, 1, device=histories.device)
