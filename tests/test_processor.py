"""SpeederProcessor: the one owner of "rows or item ids -> model inputs" (issue 17 item 1), each distinct item looked
up and encoded once per batch (issue 18 item 2), saved with a model folder and loaded by AutoProcessor with remote
code."""

import json

import pytest
import torch
from speeder_fixtures import TINY_MODEL_KWARGS, run_isolated, tiny_model

from modeling_speeder import ItemFeatureTable, SpeederItemCache, SpeederProcessor


def feature_table(num_items: int = 20, seed: int = 0) -> ItemFeatureTable:
    generator = torch.Generator().manual_seed(seed)
    return ItemFeatureTable(
        {m: torch.randn(num_items, TINY_MODEL_KWARGS[f"{m}_feature_size"], generator=generator)
         for m in ("text", "vision", "id")},
        {m: torch.ones(num_items, dtype=torch.bool) for m in ("text", "vision", "id")},
    )


ROWS = [{"history": [1, 2, 3, 1, 2], "candidates": [4, 5, 1], "label": 2},
        {"history": [4, 5, 6], "ppt_positions": [0, 1, 2], "ppt_label": "no"}]


def test_distinct_items_are_encoded_once_and_give_the_per_placeholder_result():
    model, tokenizer = tiny_model()
    model.eval()
    processor = SpeederProcessor.from_model_config(model.config, tokenizer).with_items(feature_table())
    batch = processor(ROWS)
    placeholders = [1, 2, 3, 1, 2, 4, 5, 1, 4, 5, 6, 4, 5, 6]
    assert batch["item_rows"].shape == batch["history_positions"].shape == (len(placeholders),)
    assert batch["text_features"].shape[0] == batch["modality_mask"].shape[0] == len(set(placeholders)) == 6
    encoded = []
    model.model.item_encoder.register_forward_hook(lambda module, inputs, output: encoded.append(len(output)))
    with torch.no_grad():
        deduplicated = model(**batch)
        per_placeholder = {k: v for k, v in batch.items() if k != "item_rows"}
        for name in ("text_features", "vision_features", "id_features", "modality_mask"):
            per_placeholder[name] = batch[name][batch["item_rows"]]
        plain = model(**per_placeholder)
    assert encoded == [6, len(placeholders)]
    torch.testing.assert_close(deduplicated.logits, plain.logits)
    torch.testing.assert_close(deduplicated.loss, plain.loss)


def test_labels_are_the_answer_only_and_padding_follows_the_side():
    model, tokenizer = tiny_model()
    processor = SpeederProcessor.from_model_config(model.config, tokenizer).with_items(feature_table())
    batch = processor(ROWS)
    answers = batch["labels"][batch["labels"] != -100].tolist()
    builder = processor.prompt_builder
    assert answers == [builder.candidate_label_token_ids[2], builder.ppt_answer_token_ids["no"]]
    left = processor(ROWS, with_answer=False, padding_side="left")
    assert "labels" not in left and left["attention_mask"][:, -1].all()
    assert left["input_ids"].shape[1] == batch["input_ids"].shape[1] - 1
    with pytest.raises(ValueError, match="padding_side"):
        processor(ROWS, padding_side="middle")
    with pytest.raises(ValueError, match="No items"):
        SpeederProcessor.from_model_config(model.config, tokenizer)(ROWS)


def test_item_ids_from_the_item_cache_score_like_recommend():
    model, tokenizer = tiny_model()
    model.eval()
    ids = [f"i{k}" for k in range(12)]
    features = feature_table(12)
    model.add_items(ids, **{f"{m}_features": features.features[m] for m in ("text", "vision", "id")})
    assert isinstance(model.item_cache, SpeederItemCache)
    processor = SpeederProcessor.from_model_config(model.config, tokenizer).with_items(model.item_cache)
    inputs = processor(histories=[["i1", "i2", "i1"]], candidates=[["i3", "i1", "i4"]])
    assert inputs["item_embeddings"].shape[0] == 4  # i1, i2, i3, i4: each distinct item once
    with torch.no_grad():
        scores = model.score_candidates(**inputs, num_candidates=3)[0].tolist()
    ranked = model.recommend(["i1", "i2", "i1"], ["i3", "i1", "i4"], tokenizer=tokenizer)
    assert [item for item, _ in ranked] == [["i3", "i1", "i4"][i] for i in sorted(range(3), key=lambda i: -scores[i])]
    assert [score for _, score in ranked] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)


def test_prompt_styles_share_the_template_code_and_refuse_unknown_ones():
    _, tokenizer = tiny_model()
    titles = [f"item {i}" for i in range(20)]
    features = feature_table()
    llara = SpeederProcessor(tokenizer, max_history_length=3, prompt_style="llara").with_items(features, ("id",),
                                                                                              titles=titles)
    tmf = SpeederProcessor(tokenizer, max_history_length=3, prompt_style="tmf").with_items(features, titles=titles)
    row = {"history": [1, 2, 3, 4], "candidates": [5, 6], "label": 0}
    one, two = llara([row]), tmf([row])
    assert (one["input_ids"] == llara.prompt_builder.item_token_id).sum() == 3 + 2
    assert (two["input_ids"] == tmf.prompt_builder.item_token_id).sum() == 2 * (3 + 2)
    assert one["modality_mask"].tolist() == [[False, False, True]] * 5  # every item its ID row, as in LLaRA
    assert two["modality_mask"][:, 1:].sum(0).tolist() == [5, 5]  # one image and one ID placeholder per item
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        SpeederProcessor(tokenizer, prompt_style="chat")


def test_a_saved_model_folder_loads_its_processor_with_remote_code_alone(tmp_path):
    model, tokenizer = tiny_model()
    ids = [f"i{k}" for k in range(6)]
    features = feature_table(6)
    model.add_items(ids, titles=[f"item {k}" for k in range(6)],
                    **{f"{m}_features": features.features[m] for m in ("text", "vision", "id")})
    model.get_processor(tokenizer)  # kept by the model: save_pretrained writes it
    model.save_pretrained(tmp_path / "folder")
    saved = json.loads((tmp_path / "folder" / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_speeder.SpeederProcessor"
    assert saved["max_history_length"] == model.config.max_history_length
    output = run_isolated(f"""
        import json
        from transformers import AutoModel, AutoProcessor
        folder = {str(tmp_path / "folder")!r}
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        inputs = processor.with_items(model.item_cache)(histories=[["i1", "i2"]], candidates=[["i3", "i4"]])
        scores = model.score_candidates(**inputs, num_candidates=2)[0].tolist()
        print(json.dumps({{"scores": scores, "recommend": model.recommend(["i1", "i2"], ["i3", "i4"])}}))
    """)
    result = json.loads(output.strip().splitlines()[-1])
    assert sorted(result["scores"], reverse=True) == pytest.approx([s for _, s in result["recommend"]], abs=1e-5)
