"""Processor class for Speeder: rows of item ids → model inputs.

    processor = AutoProcessor.from_pretrained(FOLDER, trust_remote_code=True)  # items: the folder's item cache
    inputs = processor(histories=[["50", "172"]], candidates=[["181", "100", "1"]])
    scores = model.score_candidates(**inputs)  # (1, 3)

The processor writes the prompt (Speeder's, or the LLaRA-/TMF-style variants), pads, labels the answer only, and
looks the prompt's items up: in an [`ItemFeatureTable`] (training, items are row indices) or in the model's item
cache (serving, items are ids). Each distinct item of a batch is looked up once: the item inputs hold one row per
distinct item and `item_rows` maps each `<item>` placeholder to its row.
"""

import copy
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_speeder import MODALITIES
from .prompt_speeder import (
    IGNORE_INDEX,
    MODEL_CANDIDATE_LABELS,
    LlaraPromptBuilder,
    SpeederPromptBuilder,
    TitlePromptBuilder,
    TmfPromptBuilder,
)

logger = logging.get_logger(__name__)

PROMPT_STYLES = ("speeder", "llara", "tmf", "titles")
PADDING_SIDES = ("right", "left")
# set by `with_items`, never saved
_RUNTIME_ATTRIBUTES = ("prompt_builder", "items", "item_modalities", "titles", "users", "with_answer", "padding_side")


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


def distinct_rows(keys: list) -> tuple[list, torch.LongTensor]:
    """The distinct `keys` in first-seen order, and per key its row among them `(len(keys),)`."""
    rows = {}
    index = [rows.setdefault(key, len(rows)) for key in keys]
    return list(rows), torch.tensor(index, dtype=torch.long)


def pad_token_id(tokenizer, item_token_id: int | None = None) -> int:
    """The id that pads prompts: the tokenizer's pad token, else EOS, else 0 (never `<item>`)."""
    return next(token for token in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0, 1)
                if token is not None and token != item_token_id)


class SpeederProcessor(ProcessorMixin):
    r"""
    Builds Speeder's model inputs from rows of item ids: prompt token ids with one `<item>` placeholder per item,
    padding, answer-only labels, `history_positions`, and the items' inputs.

    Args:
        tokenizer: the model's tokenizer, with `<item>` as an added token.
        candidate_labels (`list[str]`): label text of each candidate slot (`config.candidate_labels`).
        history_indices (`bool`): write each history item's index before its `<item>` (`config.history_indices`).
        max_history_length (`int`): history items kept, the most recent (`config.max_history_length`).
        prompt_style (`str`): `"speeder"` (the Hybrid Prompt), `"llara"` (title + ID token), `"tmf"` (title +
            image and ID tokens) or `"titles"` (titles only).
        title_tokens (`int`, *optional*): LLaRA/TMF styles: cycle / truncate every title to this many tokens.
        user_token (`bool`): start each prompt with a `<user>` token (`config.user_token`); its features come from
            the user encoder given to `with_items`.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        candidate_labels: list[str] | None = None,
        history_indices: bool = True,
        max_history_length: int = 50,
        prompt_style: str = "speeder",
        title_tokens: int | None = None,
        user_token: bool = False,
        chat_template=None,
        **kwargs,
    ):
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {list(PROMPT_STYLES)}, got {prompt_style!r}.")
        if not isinstance(max_history_length, int) or max_history_length < 1:
            raise ValueError(f"max_history_length must be an integer >= 1, got {max_history_length!r}.")
        self.candidate_labels = list(candidate_labels or MODEL_CANDIDATE_LABELS)
        self.history_indices = bool(history_indices)
        self.max_history_length = max_history_length
        self.prompt_style = prompt_style
        self.title_tokens = title_tokens
        self.user_token = bool(user_token)
        if self.user_token and prompt_style != "speeder":
            raise ValueError(f"user_token needs prompt_style='speeder', not {prompt_style!r}.")
        super().__init__(tokenizer, chat_template=chat_template)
        if prompt_style == "speeder":
            self.prompt_builder = SpeederPromptBuilder(tokenizer, self.candidate_labels, self.history_indices,
                                                       self.user_token)
        else:
            kind = {"llara": LlaraPromptBuilder, "tmf": TmfPromptBuilder, "titles": TitlePromptBuilder}[prompt_style]
            self.prompt_builder = kind(tokenizer, title_tokens=title_tokens)
        self.items, self.item_modalities, self.titles, self.users = None, None, None, None
        self.with_answer, self.padding_side = None, "right"

    @classmethod
    def from_model_config(cls, config, tokenizer=None, **kwargs) -> "SpeederProcessor":
        """The processor of a model with this `SpeederConfig` (`kwargs` override its settings); `tokenizer` default:
        loaded from `config`'s folder."""
        if tokenizer is None:
            if not getattr(config, "_name_or_path", None):
                raise ValueError("The model was not loaded from a folder: pass its tokenizer.")
            tokenizer = AutoTokenizer.from_pretrained(config._name_or_path, trust_remote_code=True)
        settings = {"candidate_labels": config.candidate_labels, "history_indices": config.history_indices,
                    "max_history_length": config.max_history_length, "user_token": config.user_token}
        processor = cls(tokenizer, **(settings | kwargs))
        if processor.prompt_style == "speeder" and processor.prompt_builder.item_token_id != config.item_token_id:
            raise ValueError(
                f"The tokenizer's <item> id {processor.prompt_builder.item_token_id} differs from config.item_token_id "
                f"{config.item_token_id}: load the tokenizer saved with this model."
            )
        if processor.user_token and processor.prompt_builder.user_token_id != config.user_token_id:
            raise ValueError(f"The tokenizer's <user> id {processor.prompt_builder.user_token_id} differs from "
                             f"config.user_token_id {config.user_token_id}: load the tokenizer saved with this model.")
        return processor

    def to_dict(self) -> dict:
        runtime = {name: self.__dict__.pop(name) for name in _RUNTIME_ATTRIBUTES if name in self.__dict__}
        try:
            return super().to_dict()
        finally:
            self.__dict__.update(runtime)

    def with_items(self, items, modalities=None, titles=None, with_answer: bool | None = None,
                   padding_side: str = "right", users=None) -> "SpeederProcessor":
        """A copy that looks items up in `items` and uses these call defaults (a data collator).

        Args:
            items: an [`ItemFeatureTable`] (items are row indices) or the model's item cache (items are ids).
            modalities: the feature table's modalities fed to the model (default: all it has).
            titles: item → title (a list by row index, or a dict), for the LLaRA/TMF/titles prompt styles.
            with_answer, padding_side: defaults of `__call__`.
            users: with `user_token`, the user encoder: `users.user_features(histories, by_row)` gives `(batch,
                user_feature_size)` features of histories of item ids, or of row indices `by_row` (a
                [`SpeederSASRecRetriever`]).
        """
        bound = copy.copy(self)
        bound.items, bound.titles, bound.users = items, titles, users
        bound.item_modalities = None if modalities is None else tuple(modalities)
        bound.with_answer, bound.padding_side = with_answer, padding_side
        return bound

    @property
    def pad_token_id(self) -> int:
        return pad_token_id(self.tokenizer, self.prompt_builder.item_token_id)

    def _title(self, item) -> str:
        if self.titles is None:
            raise ValueError(f"prompt_style={self.prompt_style!r} writes titles: pass titles=... to with_items.")
        return self.titles[item]

    def encode(self, row: dict, with_answer: bool):
        """(prompt, per `<item>` placeholder its lookup key) for one row: `(item, None)` for Speeder's prompt (every
        modality of the item), `(item, modality)` for the LLaRA/TMF styles (one embedding per placeholder)."""
        history = list(row["history"])
        if row.get("ppt_positions"):
            if self.prompt_style != "speeder":
                raise ValueError(f"PPT rows need prompt_style='speeder', not {self.prompt_style!r}.")
            if len(history) > self.max_history_length:
                raise ValueError(
                    f"A PPT sample has {len(history)} history items but max_history_length is "
                    f"{self.max_history_length}: build the data with --max-history no larger than the model's."
                )
            prompt = self.prompt_builder.ppt(len(history), answer=row["ppt_label"] if with_answer else None)
            return prompt, [(item, None) for item in history + [history[p] for p in row["ppt_positions"]]]
        history, candidates = history[-self.max_history_length:], list(row["candidates"])
        answer = int(row["label"]) if with_answer else None
        if self.prompt_style == "speeder":
            prompt = self.prompt_builder.recommendation(len(history), len(candidates), answer=answer)
            return prompt, [(item, None) for item in history + candidates]
        prompt = self.prompt_builder.recommendation([self._title(i) for i in history],
                                                    [self._title(i) for i in candidates], answer=answer)
        items = history + candidates
        return prompt, [(items[slot], modality) for slot, modality in zip(prompt.item_slots, prompt.item_modalities)]

    def pad(self, prompts: list, padding_side: str = "right", with_answer: bool = True) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask` and, `with_answer`, `labels` (answer tokens only) `(batch, longest)` of
        tokenized prompts; without the answer, each prompt stops before it."""
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {list(PADDING_SIDES)}, got {padding_side!r}.")
        sequences = [p.input_ids if with_answer else p.input_ids[:p.prompt_length] for p in prompts]
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (prompt, ids) in enumerate(zip(prompts, sequences)):
            span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
            input_ids[i, span] = torch.tensor(ids)
            attention_mask[i, span] = 1
            labels[i, span] = torch.tensor(prompt.labels[:len(ids)])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return {**batch, "labels": labels} if with_answer else batch

    def item_inputs(self, keys: list, items=None) -> dict[str, torch.Tensor]:
        """The inputs of the distinct items among `keys` (see `encode`) and `item_rows` `(len(keys),)`."""
        items = self.items if items is None else items
        distinct, item_rows = distinct_rows(keys)
        ids = [item for item, _ in distinct]
        if isinstance(items, ItemFeatureTable):
            modalities = self.item_modalities or tuple(items.features)
            inputs = items.gather(torch.tensor(ids, dtype=torch.long), modalities)
            slots = [modality for _, modality in distinct]
            if any(slot is not None for slot in slots):  # LLaRA/TMF: each placeholder reads its modality's row
                inputs["modality_mask"] = torch.tensor(
                    [[m == slot for m in MODALITIES] for slot in slots], dtype=torch.bool)
        elif hasattr(items, "rows_of") and hasattr(items, "embeddings"):  # the model's item cache
            rows = torch.tensor(items.rows_of(ids), dtype=torch.long)
            inputs = {"item_embeddings": items.embeddings[rows]}
        else:
            raise ValueError(
                "No items to look the prompts' items up in: pass items=... (an ItemFeatureTable or the model's "
                "item cache), or call with_items(...)."
            )
        return {**inputs, "item_rows": item_rows}

    def __call__(
        self,
        rows: list[dict] | None = None,
        histories: list[list] | None = None,
        candidates: list[list] | None = None,
        items=None,
        with_answer: bool | None = None,
        padding_side: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Model inputs of a batch.

        Args:
            rows: stored rows: recommendation `{"history", "candidates", "label"}` or PPT `{"history",
                "ppt_positions", "ppt_label"}`.
            histories, candidates: instead of `rows`, per user the item ids of the history (oldest first) and of the
                candidates; no answer.
            items: the item lookup (default: the one given to `with_items`).
            with_answer: append and label the answer (default: `with_items`'s, else True for `rows`).
            padding_side: `"right"` (training, one-pass scoring) or `"left"` (`generate`).
        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` `(batch, seq_len)`, `labels` (with an answer); where the
            prompts hold items, `history_positions` and `item_rows` `(num_placeholders,)` and the distinct items'
            `<m>_features` + `modality_mask` `(num_distinct, 3)`, or `item_embeddings` `(num_distinct, hidden_size)`.
        """
        if (rows is None) == (histories is None):
            raise ValueError("Pass rows=... (stored rows) or histories=... with candidates=..., not both.")
        if rows is None:
            if candidates is None or len(candidates) != len(histories):
                raise ValueError("histories=... needs candidates=... with one list of candidates per history.")
            rows = [{"history": list(h), "candidates": list(c)} for h, c in zip(histories, candidates)]
            with_answer = False
        elif with_answer is None:
            with_answer = self.with_answer
        if not rows:
            raise ValueError("The batch is empty: pass at least one row.")
        if with_answer is None:  # rows that carry their answer are trained on
            with_answer = all(("ppt_label" if row.get("ppt_positions") else "label") in row for row in rows)
        if histories is not None and any(len(history) > self.max_history_length for history in histories):
            logger.warning_once(
                f"The processor keeps the {self.max_history_length} most recent history items (the model's position "
                "table has that many rows); older items are dropped."
            )
        prompts, keys = zip(*(self.encode(row, with_answer) for row in rows))
        batch = self.pad(list(prompts), padding_side or self.padding_side, with_answer)
        if self.user_token:
            batch["user_features"] = self.user_features(rows, items)
        if any(keys):  # a titles-only prompt has no item placeholders: a plain causal LM reads it
            batch["history_positions"] = torch.tensor(
                [position for prompt in prompts for position in prompt.history_positions], dtype=torch.long)
            batch.update(self.item_inputs([key for sample in keys for key in sample], items))
        return BatchFeature(batch)

    def user_features(self, rows: list[dict], items=None) -> torch.Tensor:
        """`(batch, user_feature_size)` features of each row's user, from the history its prompt shows (`encode`
        keeps the most recent `max_history_length` items); each distinct history is encoded once (a sequence's
        pools share one)."""
        if self.users is None:
            raise ValueError("This processor writes a <user> token (user_token=True) but has no user encoder: pass "
                             "users=... (e.g. the model's SASRec retriever) to with_items.")
        items = self.items if items is None else items
        histories, rows_of = distinct_rows([tuple(row["history"][-self.max_history_length:]) for row in rows])
        features = self.users.user_features([list(h) for h in histories], by_row=isinstance(items, ItemFeatureTable))
        return features[rows_of]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "history_positions", "item_rows", "item_embeddings", "text_features",
                "vision_features", "id_features", "modality_mask", "user_features"]


__all__ = ["IGNORE_INDEX", "ItemFeatureTable", "PROMPT_STYLES", "SpeederProcessor", "distinct_rows", "pad_token_id"]
