"""Turns stored samples into Speeder batches: Hybrid Prompt token ids, answer-only labels, and the item inputs.

A training row is either a recommendation sample (`history`, `candidates`, `label`) or a Position Proxy Task sample
(`history`, `ppt_positions`, `ppt_label`); both go through the same prompt builder. Items are gathered in placeholder
order (history, then candidates or the three PPT items) with their features, a modality mask restricted to the
stage's modalities, and PPL positions (history 1..n, the others 0).
"""

from dataclasses import dataclass

import torch

from modeling_speeder import MODALITIES, SpeederPromptBuilder

IGNORE_INDEX = -100


@dataclass
class ItemFeatureTable:
    """Cached per-item features: `features[m]` `(num_items, dim_m)` float32 and `present[m]` `(num_items,)` bool."""

    features: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]

    @property
    def num_items(self) -> int:
        return next(iter(self.present.values())).shape[0]

    def gather(self, item_indices: torch.Tensor, modalities) -> dict[str, torch.Tensor]:
        """Model inputs for the given items: `<m>_features` and `modality_mask` `(num_items, 3)` in MODALITIES order."""
        inputs = {}
        mask = torch.zeros(len(item_indices), len(MODALITIES), dtype=torch.bool)
        for slot, modality in enumerate(MODALITIES):
            if modality in modalities and modality in self.features:
                inputs[f"{modality}_features"] = self.features[modality][item_indices]
                mask[:, slot] = self.present[modality][item_indices]
        inputs["modality_mask"] = mask
        return inputs

    def check_items(self, item_indices, modalities) -> None:
        """Raises ValueError naming the first items that have none of `modalities` present."""
        indices = torch.as_tensor(sorted(set(int(i) for i in item_indices)), dtype=torch.long)
        if indices.numel() and int(indices.max()) >= self.num_items:
            raise ValueError(f"Item index {int(indices.max())} is beyond the feature table's {self.num_items} items.")
        usable = torch.zeros(len(indices), dtype=torch.bool)
        for modality in modalities:
            if modality in self.present:
                usable |= self.present[modality][indices]
        if not usable.all():
            missing = indices[~usable][:10].tolist()
            raise ValueError(
                f"Items {missing} have no features for any of the modalities {list(modalities)}: compute them with "
                "`python -m datasets_builder features`, or drop such items at build time."
            )


class SpeederCollator:
    """Collates recommendation and PPT rows into model inputs with labels on the answer token only.

    Args:
        prompt_builder: the model's [`SpeederPromptBuilder`].
        item_features: the cached item features.
        modalities: modalities present in this stage's data.
        max_history: history items kept (the most recent), at most the model's PPL rows.
        with_answer: append the answer token and label it (training); False gives inference prompts.
        padding_side: "right" for training and one-pass scoring, "left" for `generate`.
    """

    def __init__(
        self,
        prompt_builder: SpeederPromptBuilder,
        item_features: ItemFeatureTable,
        modalities,
        max_history: int,
        with_answer: bool = True,
        padding_side: str = "right",
    ):
        self.prompt_builder = prompt_builder
        self.item_features = item_features
        self.modalities = tuple(modalities)
        self.max_history = max_history
        self.with_answer = with_answer
        self.padding_side = padding_side
        self.pad_token_id = prompt_builder.tokenizer.pad_token_id

    def encode(self, row: dict):
        """(prompt, item indices in placeholder order) for one row."""
        history = list(row["history"])
        if row.get("ppt_positions"):
            if len(history) > self.max_history:
                raise ValueError(
                    f"A PPT sample has {len(history)} history items but max_history is {self.max_history}: build "
                    "the data with --max-history no larger than the model's."
                )
            answer = row["ppt_label"] if self.with_answer else None
            prompt = self.prompt_builder.ppt(len(history), answer=answer)
            items = history + [history[p] for p in row["ppt_positions"]]
        else:
            history = history[-self.max_history:]
            candidates = list(row["candidates"])
            answer = int(row["label"]) if self.with_answer else None
            prompt = self.prompt_builder.recommendation(len(history), len(candidates), answer=answer)
            items = history + candidates
        return prompt, items

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts, items = zip(*(self.encode(row) for row in rows))
        width = max(len(p.input_ids) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        labels = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            length = len(prompt.input_ids)
            span = slice(0, length) if self.padding_side == "right" else slice(width - length, width)
            input_ids[i, span] = torch.tensor(prompt.input_ids)
            attention_mask[i, span] = 1
            if prompt.answer_token_id is not None:
                labels[i, span.stop - 1] = prompt.answer_token_id
        item_indices = torch.tensor([item for sample in items for item in sample], dtype=torch.long)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "history_positions": torch.tensor([pos for p in prompts for pos in p.history_positions], dtype=torch.long),
            **self.item_features.gather(item_indices, self.modalities),
        }
        if self.with_answer:
            batch["labels"] = labels
        return batch
