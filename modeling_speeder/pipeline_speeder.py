"""The `"sequential-recommendation"` pipeline: item histories (ids or titles) in, each user's top items out.

    from transformers import pipeline

    recommender = pipeline("sequential-recommendation", model=FOLDER, trust_remote_code=True)
    recommender(["50", "Star Wars (1977)"], top_k=3)  # [{"item_id", "title", "score"}, ...], best first
    recommender([history_1, history_2])                # one list per history, scored in one batched forward pass

An exported folder names this file in `config.json` (`custom_pipelines`), so it travels with the model (remote
code) and imports nothing from the repository. Each history is re-ranked by [`SpeederForSequentialRec.recommend`]
from candidates retrieved from the whole item cache (or the `candidate_item_ids` given).
"""

from collections.abc import Mapping, Set

from transformers import Pipeline

PIPELINE_TASK = "sequential-recommendation"


class SpeederRecommendationPipeline(Pipeline):
    """Recommends items for histories with a Speeder model and its item cache.

    Call arguments:
        inputs: one history, a list of item ids or titles (of the item cache's `item_table.jsonl`), oldest first; or
            a list of such histories, ranked batched.
        top_k (`int`, *optional*): items returned per history; default: all re-ranked candidates.
        num_candidates (`int`, *optional*): items retrieved and re-ranked (at most the model's candidate labels).
        retriever (`str`, defaults to `"item_cache"`): `"item_cache"` or `"sasrec"`, see `recommend`.
        exclude_history (`bool`, defaults to `True`): never recommend an item of the history.
        candidate_item_ids (`list`, *optional*): rank these (ids or titles) instead of retrieving; a list per history
            for a batch.
        batch_size (`int`, *optional*): histories per forward pass (default: 32).
    Returns:
        per history, `[{"item_id": str, "title": str | None, "score": float}, ...]`, best first.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        histories, single = self._histories(inputs)
        candidates = kwargs.pop("candidate_item_ids", None)
        if candidates is not None:
            candidates = [candidates] if single else candidates
            if isinstance(candidates, (str, bytes)) or len(candidates) != len(histories):
                raise ValueError(
                    f"candidate_item_ids must hold one list of candidates per history ({len(histories)}), got "
                    f"{candidates!r}."
                )
        request = {"histories": histories, "candidates": candidates,
                   "batch_size": batch_size or self._batch_size or 32}
        outputs = super().__call__(request, **kwargs)
        return outputs[0] if single else outputs

    @staticmethod
    def _histories(inputs) -> tuple[list[list], bool]:
        """`inputs` as a list of histories, and whether it was a single one."""
        if isinstance(inputs, (str, bytes, Set, Mapping)) or not isinstance(inputs, (list, tuple)):
            raise ValueError(
                f"Pass a history (a list of item ids or titles, oldest first) or a list of histories, got "
                f"{type(inputs).__name__} {inputs!r}."
            )
        if not inputs:
            raise ValueError("The history is empty: Speeder needs at least one item the user interacted with.")
        nested = [isinstance(entry, (list, tuple)) for entry in inputs]
        if all(nested):
            return [list(history) for history in inputs], False
        if any(nested):
            raise ValueError(
                "The input mixes item ids or titles with lists: pass one history (a list of item ids or titles) or a "
                "list of histories (a list of such lists)."
            )
        return [list(inputs)], True

    def _sanitize_parameters(
        self, top_k=None, num_candidates=None, retriever=None, exclude_history=None, **kwargs
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise ValueError(
                f"Unknown arguments {sorted(kwargs)}: the sequential-recommendation pipeline takes top_k, "
                "num_candidates, retriever, exclude_history, candidate_item_ids and batch_size."
            )
        forward = {"top_k": top_k, "num_candidates": num_candidates}
        if retriever is not None:
            forward["retriever"] = retriever
        if exclude_history is not None:
            forward["exclude_history"] = exclude_history
        return {}, forward, {}

    def _item_ids(self, entries: list[list], what: str) -> list[list[str]]:
        """Item ids or titles → item ids (an id wins over an equal title); raises one ValueError listing every entry
        that is neither, or whose title several items share."""
        cache = self.model.item_cache
        built_for, by_title = getattr(self, "_title_index", (None, None))
        if built_for != (id(cache), len(cache)):  # first call, another cache, or items added since
            by_title = {}
            for item_id, title in zip(cache.item_ids, cache.titles):
                if title is not None:
                    by_title.setdefault(str(title), []).append(item_id)
            self._title_index = ((id(cache), len(cache)), by_title)
        resolved, unknown, ambiguous = [], [], {}
        for group in entries:
            ids = []
            for entry in group:
                if str(entry) in cache.rows:
                    ids.append(str(entry))
                elif len(by_title.get(str(entry), ())) == 1:
                    ids.append(by_title[str(entry)][0])
                elif str(entry) in by_title:
                    ambiguous[str(entry)] = by_title[str(entry)]
                else:
                    unknown.append(entry)
            resolved.append(ids)
        if unknown:
            unknown = list(dict.fromkeys(unknown))
            more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
            raise ValueError(
                f"Unknown {what} {unknown[:20]}{more}: neither an item id nor a title of the item cache's {len(cache)} "
                "items (see item_table.jsonl)."
            )
        if ambiguous:
            raise ValueError(f"Titles shared by several items, {ambiguous}: pass these items by id.")
        return resolved

    def preprocess(self, request: dict) -> dict:
        histories = request["histories"]
        for index, history in enumerate(histories):
            if not history:
                name = "The history" if len(histories) == 1 else f"History {index}"
                raise ValueError(f"{name} is empty: Speeder needs at least one item the user interacted with.")
        candidates = request["candidates"]
        return {
            "histories": self._item_ids(histories, "history items"),
            "candidates": None if candidates is None else self._item_ids(candidates, "candidates"),
            "batch_size": request["batch_size"],
        }

    def _forward(self, model_inputs: dict, **recommend_kwargs) -> dict:
        rankings = self.model.recommend_batch(
            model_inputs["histories"], model_inputs["candidates"], tokenizer=self.tokenizer,
            batch_size=model_inputs["batch_size"], **recommend_kwargs,
        )
        return {"rankings": rankings}

    def postprocess(self, model_outputs: dict) -> list[list[dict]]:
        cache = self.model.item_cache
        return [
            [{"item_id": item_id, "title": cache.titles[cache.rows[item_id]], "score": score}
             for item_id, score in ranking]
            for ranking in model_outputs["rankings"]
        ]


__all__ = ["PIPELINE_TASK", "SpeederRecommendationPipeline"]
