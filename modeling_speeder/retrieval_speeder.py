"""Candidate retrieval for full-catalogue recommendation: which K items of the item cache Speeder re-ranks.

Two retrievers, chosen by `SpeederForSequentialRec.recommend(..., retriever=...)`:

* `"item_cache"`: cosine between the mean of the history items' cached one-token embeddings and every cached item.
  Needs nothing but the item cache.
* `"sasrec"`: a SASRec ID model (Kang & McAuley, ICDM 2018) shipped beside the weights as
  `retriever_sasrec.safetensors` (`hub_upload.export.export_run(..., sasrec_retriever=True)`): its next-item scores
  over every item it was trained on. [`SpeederSASRecRetriever`] holds the same modules under the same names as the
  repository's `baselines.SASRec`, so that model's state dict loads into it unchanged.

This file travels with the model (remote code): it imports nothing from the repository.
"""

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

SASREC_RETRIEVER_FILE = "retriever_sasrec.safetensors"
RETRIEVERS = ("item_cache", "sasrec")
SASREC_CONFIG_KEYS = ("hidden_size", "max_seq_length", "n_layers", "n_heads", "inner_size", "layer_norm_eps")


def item_cache_scores(embeddings: torch.Tensor, history_rows: list[list[int]]) -> torch.Tensor:
    """Cosine of each history's mean embedding with every cached item.

    Args:
        embeddings: the item cache, `(num_items, hidden_size)`.
        history_rows: per user, the cache rows of the history items (at least one).
    Returns:
        `(batch, num_items)` float32 scores in [-1, 1].
    """
    embeddings = embeddings.float()
    queries = torch.stack([embeddings[torch.as_tensor(rows)].mean(dim=0) for rows in history_rows])
    return nn.functional.normalize(queries, dim=-1) @ nn.functional.normalize(embeddings, dim=-1).T


def top_rows(scores: torch.Tensor, k: int, allowed: torch.Tensor) -> list[int]:
    """The `k` best of `scores` `(num_items,)` among the `allowed` `(num_items,)` bool rows, best first (ties: lower
    row first; a NaN score, from a non-finite cached embedding, ranks last)."""
    scores = scores.float().nan_to_num(nan=float("-inf")).masked_fill(~allowed, float("-inf"))
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].tolist()


class SpeederSASRecRetriever(nn.Module):
    """SASRec's next-item scorer: item + learned position embeddings, LayerNorm, a causal Transformer encoder; the
    output after the last history item, dotted with every item's embedding, scores every item.

    Args:
        item_ids: the id of each item, in the order of the embedding rows 1.. (row 0 is padding).
        hidden_size, max_seq_length, n_layers, n_heads, inner_size, layer_norm_eps: SASRec's sizes.
    """

    def __init__(
        self,
        item_ids: list[str],
        hidden_size: int = 64,
        max_seq_length: int = 50,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        self.item_ids = [str(item_id) for item_id in item_ids]
        self.rows = {item_id: row for row, item_id in enumerate(self.item_ids)}
        if len(self.rows) != len(self.item_ids):
            raise ValueError("The SASRec retriever's item ids repeat: each item needs one embedding row.")
        self.config = {"hidden_size": hidden_size, "max_seq_length": max_seq_length, "n_layers": n_layers,
                       "n_heads": n_heads, "inner_size": inner_size, "layer_norm_eps": layer_norm_eps}
        self.item_embedding = nn.Embedding(len(self.item_ids) + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden_size, nhead=n_heads, dim_feedforward=inner_size, dropout=0.0, activation="gelu",
            layer_norm_eps=layer_norm_eps, batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.eval()

    @property
    def max_history_length(self) -> int:
        return self.config["max_seq_length"]

    @torch.no_grad()
    def forward(self, histories: torch.LongTensor) -> torch.Tensor:
        """histories `(batch, length)`: item rows 0.. (the order of `item_ids`), right-padded with -1; every row holds
        at least one item. Returns the scores of every item, `(batch, num_items)`."""
        return self.encode(histories) @ self.item_embedding.weight[1:].T

    @torch.no_grad()
    def encode(self, histories: torch.LongTensor) -> torch.Tensor:
        """The sequence representation after each history's last item, `(batch, hidden_size)`; `histories` as in
        `forward`."""
        length = histories.shape[1]
        positions = torch.arange(length, device=histories.device).unsqueeze(0)
        hidden = self.layer_norm(self.item_embedding(histories + 1) + self.position_embedding(positions))
        causal_mask = nn.Transformer.generate_square_subsequent_mask(length, device=histories.device)
        output = self.encoder(hidden, mask=causal_mask, is_causal=True)
        last = (histories >= 0).sum(dim=1) - 1
        return output[torch.arange(histories.shape[0], device=histories.device), last]

    def padded_rows(self, histories: list[list[int]]) -> torch.LongTensor:
        """Histories of item rows as `forward`'s right-padded `(batch, length)` input, each cut to its most recent
        `max_seq_length` items."""
        kept = [list(rows)[-self.max_history_length:] for rows in histories]
        padded = torch.full((len(kept), max(len(rows) for rows in kept)), -1, dtype=torch.long)
        for index, rows in enumerate(kept):
            padded[index, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        return padded.to(self.item_embedding.weight.device)

    def score(self, histories: list[list[str]]) -> torch.Tensor:
        """Scores of every item of `item_ids` for each history of known item ids, `(batch, num_items)`; only the
        most recent `max_seq_length` items of a history are read."""
        rows = [[self.rows[str(item_id)] for item_id in history] for history in histories]
        return self(self.padded_rows(rows)).float()

    def user_features(self, histories: list[list], by_row: bool = False) -> torch.Tensor:
        """The `<user>` features of a Speeder model with a user token: `encode` of each history, `(batch,
        hidden_size)` float32 on the CPU. Histories hold item ids (items this SASRec never saw, e.g. added to the
        item cache later, are left out), or item rows (the data's item indices) `by_row`."""
        if not by_row:
            histories = [[self.rows[str(item_id)] for item_id in history if str(item_id) in self.rows]
                         for history in histories]
            if not all(histories):
                raise ValueError("A history holds no item the user encoder (SASRec) was trained on, so it has no "
                                 "<user> token: give at least one item of its training data.")
        return self.encode(self.padded_rows(histories)).float().cpu()

    def save(self, path: str | os.PathLike):
        """Writes the weights and, in the metadata, the sizes and item ids (one safetensors file)."""
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        metadata = {"config": json.dumps(self.config), "item_ids": json.dumps(self.item_ids)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SpeederSASRecRetriever":
        """Reads the file that `save` writes."""
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "config" not in metadata or "item_ids" not in metadata:
            raise ValueError(f"{path} is not a SASRec retriever file (its metadata lacks 'config' and 'item_ids').")
        retriever = cls(json.loads(metadata["item_ids"]), **json.loads(metadata["config"]))
        retriever.load_state_dict(load_file(str(path)))
        return retriever.eval()

    @classmethod
    def from_sasrec(cls, sasrec: nn.Module, item_ids: list[str]) -> "SpeederSASRecRetriever":
        """From a trained `baselines.SASRec` (its `config` and state dict) and the id of each of its items, in
        `item_index` order."""
        config = {key: getattr(sasrec.config, key) for key in SASREC_CONFIG_KEYS}
        if len(item_ids) != sasrec.num_items:
            raise ValueError(f"{len(item_ids)} item ids for a SASRec model of {sasrec.num_items} items.")
        retriever = cls(item_ids, **config)
        retriever.load_state_dict({name: tensor.detach().cpu() for name, tensor in sasrec.state_dict().items()})
        return retriever.eval()


__all__ = ["RETRIEVERS", "SASREC_RETRIEVER_FILE", "SpeederSASRecRetriever", "item_cache_scores", "top_rows"]
