"""The prompt templates: Speeder's Hybrid Prompt, and the LLaRA- and TMF-style prompts it is compared with.

Every item occupies one `<item>` placeholder token whose input embedding the model replaces with the item's one-token
multimodal embedding, after a label: its index for a history item (the paper's "1<item>2<item>"; with
`history_indices=False` the history is "<item><item>", one token per item, its order carried by PPL alone) and its
letter for a candidate (" A<item> B<item>": the answer names the letter); the three PPT items have none. Items are
listed in the prompt in placeholder order: history first (positions 1..n for PPL), then the candidates (or the
three PPT items), which carry no position. A model with a user token (`config.user_token`) starts each prompt with
"The user:<user>.": one `<user>` placeholder whose embedding the model makes from the user's sequence representation.

The LLaRA-style prompt (Liao et al., SIGIR'24) writes each item as its title followed by ONE `<item>` token (its ID
embedding); the TMF-style prompt follows the title with TWO (image, then ID); the titles-only variant has none. They
answer by generating the chosen candidate's title, then EOS. Their prompts are assembled from token-id segments, so
an item costs exactly `len(title tokens) + 1` (LLaRA) or `+ 2` (TMF) tokens wherever it appears; `title_tokens=K`
cycles / truncates every title's token ids to exactly K tokens.

This file travels with the model (remote code), so an exported folder builds exactly the prompts it was trained on.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

ITEM_TOKEN = "<item>"
USER_TOKEN = "<user>"
CANDIDATE_LABEL_ALPHABET = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
DEFAULT_CANDIDATE_LABELS = CANDIDATE_LABEL_ALPHABET[:10]
MODEL_CANDIDATE_LABELS = DEFAULT_CANDIDATE_LABELS[:5]  # a model's labels unless its config names others
PPT_ANSWERS = ("yes", "no")

USER_TEMPLATE = "The user:" + USER_TOKEN + ".\n"  # words of the history template: no new vocabulary
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
IGNORE_INDEX = -100  # label of a token the loss ignores

LLARA_HISTORY_PREFIX = "This user has interacted with"
LLARA_HISTORY_SUFFIX = " in the previous. Please predict the next item this user will interact with."
LLARA_CANDIDATES_PREFIX = " Choose the answer from the following {num_candidates} item titles:"
LLARA_QUESTION = ". Answer:"
LLARA_MODALITIES = ("id",)
TMF_MODALITIES = ("vision", "id")


def candidate_labels_for(num_candidates: int) -> list[str]:
    """The candidate labels of a model trained on pools of `num_candidates`: the default five letters, or one letter
    per candidate for larger pools (A..Z, so at most 26)."""
    if not 2 <= num_candidates <= len(CANDIDATE_LABEL_ALPHABET):
        raise ValueError(
            f"Pools of {num_candidates} candidates cannot be labelled: the prompt labels candidates A..Z, so a pool "
            f"holds 2 to {len(CANDIDATE_LABEL_ALPHABET)}; build the data with --num-candidates in that range."
        )
    return list(CANDIDATE_LABEL_ALPHABET[:max(num_candidates, len(MODEL_CANDIDATE_LABELS))])


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
        prompt_length: tokens before the answer.
    """

    input_ids: list[int]
    history_positions: list[int]
    answer_token_id: int | None = None
    num_items: int = field(init=False)
    prompt_length: int = field(init=False)

    def __post_init__(self):
        self.num_items = len(self.history_positions)
        self.prompt_length = len(self.input_ids) - (self.answer_token_id is not None)

    @property
    def labels(self) -> list[int]:
        """Next-token targets: IGNORE_INDEX on the prompt, the answer token(s) after it."""
        return [IGNORE_INDEX] * self.prompt_length + list(self.input_ids[self.prompt_length:])


def checked_placeholders(prompt, item_token_id: int):
    """`prompt`, once its text holds exactly one `<item>` token per item; else a ValueError (a tokenizer that merges
    `<item>` with its neighbours, or a title that tokenizes to it, would break the splice)."""
    found = sum(1 for token in prompt.input_ids[:prompt.prompt_length] if token == item_token_id)
    if found != prompt.num_items:
        raise ValueError(f"The prompt holds {found} {ITEM_TOKEN} tokens for {prompt.num_items} items.")
    return prompt


def placeholder_token_id(tokenizer, token: str = ITEM_TOKEN) -> int:
    """The id of `token` (`<item>` or `<user>`) in `tokenizer`; raises ValueError when it is not a single added
    token."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"The tokenizer has no {token!r} token: add it with "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})."
        )
    return token_id


class SpeederPromptBuilder:
    """Builds token ids of recommendation and PPT prompts with one `<item>` token per item.

    Args:
        tokenizer: a tokenizer that knows `<item>` as a single (added) token.
        candidate_labels: the label text of each candidate slot, each a single token after a space.
        history_indices: write each history item's index before its `<item>` (the paper's prompt, 2-3 tokens per
            history item); False writes the `<item>` tokens alone (1 token per history item).
        user_token: start every prompt with `USER_TEMPLATE` (the tokenizer then needs `<user>` too).
    """

    def __init__(self, tokenizer, candidate_labels=DEFAULT_CANDIDATE_LABELS, history_indices: bool = True,
                 user_token: bool = False):
        self.tokenizer = tokenizer
        self.candidate_labels = tuple(candidate_labels)
        self.history_indices = bool(history_indices)
        self.item_token_id = placeholder_token_id(tokenizer)
        self.user_token_id = placeholder_token_id(tokenizer, USER_TOKEN) if user_token else None
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
        user = USER_TEMPLATE if self.user_token_id is not None else ""
        return user + HISTORY_TEMPLATE.format(items=items)

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
        users = prompt.input_ids.count(self.user_token_id) if self.user_token_id is not None else 1
        if users != 1:
            raise ValueError(f"The prompt holds {users} {USER_TOKEN} tokens, not 1.")
        return checked_placeholders(prompt, self.item_token_id)


@dataclass
class LlaraPrompt:
    """One tokenized LLaRA/TMF-style prompt.

    Attributes:
        input_ids: token ids; the answer (title tokens, then EOS) last when an answer was given.
        history_positions: per `<item>` token in order, the history position 1..n of its item, or 0 for candidates
            (the same convention as `SpeederPrompt`; a baseline without position embeddings ignores it).
        item_slots: per `<item>` token, the index of its item in `history + candidates` (0..n-1 history, then
            n..n+m-1 candidates).
        item_modalities: per `<item>` token, the modality whose embedding fills it (`"id"`, or `"vision"` then
            `"id"` for TMF).
        prompt_length: number of prompt tokens before the answer (the answer, if any, starts there).
        answer_token_ids: the answer tokens (the chosen title, then EOS), or None for an inference prompt.
        title_token_counts: number of title tokens of each item, in `history + candidates` order.
    """

    input_ids: list[int]
    history_positions: list[int]
    item_slots: list[int]
    item_modalities: list[str]
    prompt_length: int
    answer_token_ids: list[int] | None = None
    title_token_counts: list[int] = field(default_factory=list)
    num_items: int = field(init=False)

    def __post_init__(self):
        self.num_items = len(self.history_positions)

    @property
    def labels(self) -> list[int]:
        """Next-token targets: IGNORE_INDEX on the prompt, the answer tokens after it."""
        return [IGNORE_INDEX] * self.prompt_length + list(self.input_ids[self.prompt_length:])


class LlaraPromptBuilder:
    """Builds LLaRA-style (`tmf=False`) or TMF-style (`tmf=True`) recommendation prompts.

    Args:
        tokenizer: a tokenizer that knows `<item>` as a single (added) token and has an EOS token.
        tmf: two embedding tokens per item (image, ID) instead of one (ID).
        title_tokens: if set, every title's token ids are cycled / truncated to exactly this many tokens (for
            timing at the paper's ~20 tokens per item); None keeps the real titles.
    """

    def __init__(self, tokenizer, tmf: bool = False, title_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.tmf = tmf
        self.item_modalities = TMF_MODALITIES if tmf else LLARA_MODALITIES
        if title_tokens is not None and title_tokens < 1:
            raise ValueError(f"title_tokens must be >= 1 or None, got {title_tokens}.")
        self.title_tokens = title_tokens
        self.item_token_id = placeholder_token_id(tokenizer)
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token: the generated title needs one to end.")
        self.eos_token_id = tokenizer.eos_token_id

    @property
    def tokens_per_item_besides_title(self) -> int:
        """Embedding tokens after each title: 1 (LLaRA) or 2 (TMF)."""
        return len(self.item_modalities)

    def _text(self, text: str, first: bool = False) -> list[int]:
        # The tokenizer's own special tokens (e.g. Llama's BOS) only at the very start, as SpeederPromptBuilder.
        return list(self.tokenizer(text, add_special_tokens=first).input_ids)

    def title_ids(self, title: str) -> list[int]:
        """Token ids of one title as it appears in the prompt and in the answer (after a space)."""
        ids = self._text(" " + " ".join(str(title).split()))
        if not ids:
            ids = [self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else self.eos_token_id]
        if self.title_tokens is not None:
            ids = [ids[k % len(ids)] for k in range(self.title_tokens)]
        return ids

    def _item_segment(self, title: str, slot: int, position: int, prompt: dict) -> list[int]:
        ids = self.title_ids(title)
        prompt["title_token_counts"].append(len(ids))
        for modality in self.item_modalities:
            prompt["history_positions"].append(position)
            prompt["item_slots"].append(slot)
            prompt["item_modalities"].append(modality)
        return ids + [self.item_token_id] * len(self.item_modalities)

    def recommendation(
        self, history_titles: Sequence[str], candidate_titles: Sequence[str], answer: int | None = None
    ) -> LlaraPrompt:
        """Prompt for the history then the candidates (titles, chronological); `answer` = the candidate index whose
        title (then EOS) is appended as the answer."""
        if not candidate_titles:
            raise ValueError("A recommendation prompt needs at least one candidate.")
        if answer is not None and not 0 <= answer < len(candidate_titles):
            raise ValueError(f"answer must lie in 0..{len(candidate_titles) - 1}, got {answer}.")
        parts = {"history_positions": [], "item_slots": [], "item_modalities": [], "title_token_counts": []}
        input_ids = self._text(LLARA_HISTORY_PREFIX, first=True)
        for k, title in enumerate(history_titles):
            input_ids += self._item_segment(title, k, k + 1, parts)
        input_ids += self._text(LLARA_HISTORY_SUFFIX)
        input_ids += self._text(LLARA_CANDIDATES_PREFIX.format(num_candidates=len(candidate_titles)))
        for j, title in enumerate(candidate_titles):
            input_ids += self._item_segment(title, len(history_titles) + j, 0, parts)
        input_ids += self._text(LLARA_QUESTION)
        prompt_length = len(input_ids)
        answer_token_ids = None
        if answer is not None:
            answer_token_ids = self.title_ids(candidate_titles[answer]) + [self.eos_token_id]
            input_ids += answer_token_ids
        prompt = LlaraPrompt(
            input_ids, parts["history_positions"], parts["item_slots"], parts["item_modalities"], prompt_length,
            answer_token_ids, parts["title_token_counts"],
        )
        return checked_placeholders(prompt, self.item_token_id)

    def answer_length(self, title: str) -> int:
        """Tokens the model generates to answer with this title: its title tokens plus EOS."""
        return len(self.title_ids(title)) + 1

    def parse_answer(self, generated_ids: Sequence[int], candidate_titles: Sequence[str]) -> int:
        """Index of the candidate whose title the generated tokens spell (up to EOS), or -1 if none / ambiguous.

        Matches token ids first, then the stripped, case-folded decoded text (a model may tokenize differently)."""
        ids = list(generated_ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        pad = self.tokenizer.pad_token_id
        ids = [t for t in ids if t != pad or pad == self.eos_token_id]
        matches = [j for j, title in enumerate(candidate_titles) if self.title_ids(title) == ids]
        if len(matches) != 1:
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip().casefold()
            wanted = [self.tokenizer.decode(self.title_ids(t), skip_special_tokens=True).strip().casefold()
                      for t in candidate_titles]
            matches = [j for j, title in enumerate(wanted) if title == text]
        return matches[0] if len(matches) == 1 else -1


class TmfPromptBuilder(LlaraPromptBuilder):
    """TMF-style prompts: each item as its title plus an image and an ID embedding token."""

    def __init__(self, tokenizer, title_tokens: int | None = None):
        super().__init__(tokenizer, tmf=True, title_tokens=title_tokens)


class TitlePromptBuilder(LlaraPromptBuilder):
    """The LLaRA-style prompt with titles only (no `<item>` tokens): what an untuned LLM can read."""

    def __init__(self, tokenizer, title_tokens: int | None = None):
        super().__init__(tokenizer, title_tokens=title_tokens)
        self.item_modalities = ()
