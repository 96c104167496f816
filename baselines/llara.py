"""LLaRA-style and TMF-style prompts: every item as its title text plus embedding tokens, the answer a generated title.

The two LLM baselines Speeder compares against (PAPER.md, App. C):

* **LLaRA-style** (Liao et al., SIGIR'24): each item is its title followed by ONE ID-embedding token;
* **TMF-style**: each item is its title followed by TWO embedding tokens, image then ID.

Both answer by *generating* the chosen candidate's title (then EOS). The embedding tokens are the same `<item>`
placeholder Speeder uses (`modeling_speeder.ITEM_TOKEN`), so the same model splices them with `item_embeddings=`
and, on the same backbone, only the prompt differs. The builders mirror [`SpeederPromptBuilder`]: they return token
ids plus the order of the `<item>` placeholders (which item, which modality, which history position), so a trained
LLaRA-style baseline can reuse them.

Prompts are assembled from token-id segments, never by re-tokenizing one long string, so the cost of an item is
exact and the same wherever it appears: `len(title tokens) + 1` (LLaRA) or `+ 2` (TMF) tokens. `title_tokens=K`
cycles / truncates every title's token ids to exactly K tokens (the paper's "~20 tokens per item" setting);
real titles are used as they are otherwise.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from modeling_speeder import ITEM_TOKEN

LLARA_HISTORY_PREFIX = "This user has interacted with"
LLARA_HISTORY_SUFFIX = " in the previous. Please predict the next item this user will interact with."
LLARA_CANDIDATES_PREFIX = " Choose the answer from the following {num_candidates} item titles:"
LLARA_QUESTION = ". Answer:"
LLARA_MODALITIES = ("id",)
TMF_MODALITIES = ("vision", "id")


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
        """Next-token targets for training: -100 on the prompt, the token ids on the answer."""
        return [-100] * self.prompt_length + list(self.input_ids[self.prompt_length:])


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
        self.item_token_id = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
        if self.item_token_id is None or self.item_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {ITEM_TOKEN!r} token: add it with "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{ITEM_TOKEN!r}]}})."
            )
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
        found = sum(1 for token in prompt.input_ids[:prompt_length] if token == self.item_token_id)
        if found != prompt.num_items:  # a title that tokenizes to <item> would break the splice
            raise ValueError(f"The prompt holds {found} {ITEM_TOKEN} tokens for {prompt.num_items} placeholders.")
        return prompt

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


__all__ = ["LlaraPrompt", "LlaraPromptBuilder", "TmfPromptBuilder", "LLARA_MODALITIES", "TMF_MODALITIES"]
