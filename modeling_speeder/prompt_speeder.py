"""The Hybrid Prompt: the one place where Speeder's prompt text is defined.

Every item occupies one `<item>` placeholder token whose input embedding the model replaces with the item's one-token
multimodal embedding, after a label: its index for a history item (the paper's "1<item>2<item>"; with
`history_indices=False` the history is "<item><item>", one token per item, its order carried by PPL alone) and its
letter for a candidate (" A<item> B<item>": the answer names the letter); the three PPT items have none. Items are
listed in the prompt in placeholder order: history first (positions 1..n for PPL), then the candidates (or the
three PPT items), which carry no position.

This file travels with the model (remote code), so an exported folder builds exactly the prompts it was trained on.
"""

import re
from dataclasses import dataclass, field

ITEM_TOKEN = "<item>"
DEFAULT_CANDIDATE_LABELS = ("A", "B", "C", "D", "E", "F", "G", "H", "I", "J")
PPT_ANSWERS = ("yes", "no")

HISTORY_TEMPLATE = "The user interacted with these items in order:{items}."
HISTORY_ITEM_TEMPLATE = "{index}" + ITEM_TOKEN  # no spaces: 2 tokens per item for n < 10
HISTORY_ITEM_WITHOUT_INDEX = ITEM_TOKEN  # `history_indices=False`: adjacent placeholders, nothing between them
CANDIDATES_TEMPLATE = "\nCandidates:{items}."
CANDIDATE_ITEM_TEMPLATE = " {label}" + ITEM_TOKEN
RECOMMENDATION_QUESTION = "\nWhich candidate will the user interact with next? Answer:"
PPT_ITEMS_TEMPLATE = "\nThree of these items, in this order:{items}."
PPT_ITEM_TEMPLATE = ITEM_TOKEN
PPT_QUESTION = (
    "\nIs the first one at most as far from the second as the second is from the third in the sequence? Answer:"
)
ANSWER_TEMPLATE = " {answer}"


def template_words() -> list[str]:
    """Every word and punctuation mark the templates use (the tiny test tokenizer's vocabulary is built from it)."""
    text = " ".join(
        [HISTORY_TEMPLATE, CANDIDATES_TEMPLATE, RECOMMENDATION_QUESTION, PPT_ITEMS_TEMPLATE, PPT_QUESTION]
    ).replace("{items}", " ")
    return re.findall(r"\w+|[^\w\s]+", text)  # the split of a whitespace/punctuation pre-tokenizer


@dataclass
class SpeederPrompt:
    """One tokenized prompt.

    Attributes:
        input_ids: token ids, the answer token last when an answer was given.
        history_positions: per `<item>` token in order, its PPL position 1..n (history) or 0 (no position).
        answer_token_id: the id of the answer token, or None for an inference prompt.
    """

    input_ids: list[int]
    history_positions: list[int]
    answer_token_id: int | None = None
    num_items: int = field(init=False)

    def __post_init__(self):
        self.num_items = len(self.history_positions)


class SpeederPromptBuilder:
    """Builds token ids of recommendation and PPT prompts with one `<item>` token per item.

    Args:
        tokenizer: a tokenizer that knows `<item>` as a single (added) token.
        candidate_labels: the label text of each candidate slot, each a single token after a space.
        history_indices: write each history item's index before its `<item>` (the paper's prompt, 2-3 tokens per
            history item); False writes the `<item>` tokens alone (1 token per history item).
    """

    def __init__(self, tokenizer, candidate_labels=DEFAULT_CANDIDATE_LABELS, history_indices: bool = True):
        self.tokenizer = tokenizer
        self.candidate_labels = tuple(candidate_labels)
        self.history_indices = bool(history_indices)
        self.item_token_id = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
        if self.item_token_id is None or self.item_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {ITEM_TOKEN!r} token: add it with "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{ITEM_TOKEN!r}]}})."
            )
        self.candidate_label_token_ids = [self._single_token(label) for label in self.candidate_labels]
        self.ppt_answer_token_ids = {answer: self._single_token(answer) for answer in PPT_ANSWERS}

    def _single_token(self, answer: str) -> int:
        ids = self.tokenizer(ANSWER_TEMPLATE.format(answer=answer), add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(
                f"Answer {answer!r} must be one token after a space for this tokenizer, got {len(ids)} tokens {ids}; "
                "choose other candidate labels."
            )
        return ids[0]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)  # the tokenizer's own special tokens (e.g. Llama's BOS)

    def history_item_text(self, index: int) -> str:
        """The text of the history item at position `index` (1-based): its index and `<item>`, or `<item>` alone."""
        return HISTORY_ITEM_TEMPLATE.format(index=index) if self.history_indices else HISTORY_ITEM_WITHOUT_INDEX

    def _history_text(self, history_length: int) -> str:
        items = "".join(self.history_item_text(k) for k in range(1, history_length + 1))
        return HISTORY_TEMPLATE.format(items=items)

    def recommendation(self, history_length: int, num_candidates: int, answer: int | None = None) -> SpeederPrompt:
        """Prompt for `history_length` history items then `num_candidates` candidates; `answer` = candidate index."""
        if not 1 <= num_candidates <= len(self.candidate_labels):
            raise ValueError(
                f"num_candidates must lie in 1..{len(self.candidate_labels)} (the number of candidate labels), "
                f"got {num_candidates}."
            )
        candidates = "".join(
            CANDIDATE_ITEM_TEMPLATE.format(label=label) for label in self.candidate_labels[:num_candidates]
        )
        text = self._history_text(history_length) + CANDIDATES_TEMPLATE.format(items=candidates)
        input_ids = self._encode(text + RECOMMENDATION_QUESTION)
        answer_token_id = None if answer is None else self.candidate_label_token_ids[answer]
        if answer_token_id is not None:
            input_ids.append(answer_token_id)
        positions = list(range(1, history_length + 1)) + [0] * num_candidates
        return self._checked(SpeederPrompt(input_ids, positions, answer_token_id))

    def ppt(self, history_length: int, answer: str | None = None) -> SpeederPrompt:
        """Position Proxy Task prompt: the history, then three of its items (no positions); `answer` yes | no."""
        items = PPT_ITEM_TEMPLATE * 3
        text = self._history_text(history_length) + PPT_ITEMS_TEMPLATE.format(items=items) + PPT_QUESTION
        input_ids = self._encode(text)
        answer_token_id = None if answer is None else self.ppt_answer_token_ids[answer]
        if answer_token_id is not None:
            input_ids.append(answer_token_id)
        positions = list(range(1, history_length + 1)) + [0, 0, 0]
        return self._checked(SpeederPrompt(input_ids, positions, answer_token_id))

    def _checked(self, prompt: SpeederPrompt) -> SpeederPrompt:
        found = sum(1 for token in prompt.input_ids if token == self.item_token_id)
        if found != prompt.num_items:  # a tokenizer that merges "<item>" with its neighbours breaks the splice
            raise ValueError(f"The tokenizer produced {found} {ITEM_TOKEN} tokens for {prompt.num_items} items.")
        return prompt
