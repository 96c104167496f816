"""SpeederForSequentialRec: the splice, the item encoder, the gates, PPL, SFTTrainer training and remote-code loading."""

import json

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from speeder_fixtures import TINY_MODEL_KWARGS, item_inputs, run_isolated, tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_speeder import ItemFeatureTable, SpeederConfig, SpeederProcessor
from trainer.arguments import SpeederSFTConfig
from trainer.collator import SpeederCollator


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = tiny_model()
    return model.eval(), tokenizer


def recommendation_batch(tokenizer, model, history_lengths=(3, 5), num_candidates=5, answers=(1, 3)):
    """Right-padded prompts with answers, plus random item inputs in placeholder order."""
    builder = model.prompt_builder(tokenizer)
    prompts = [builder.recommendation(n, num_candidates, answer=a) for n, a in zip(history_lengths, answers)]
    width = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, : len(p.input_ids)] = torch.tensor(p.input_ids)
        attention_mask[i, : len(p.input_ids)] = 1
    positions = [pos for p in prompts for pos in p.history_positions]
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            **item_inputs(len(positions), history_positions=positions)}


def capture_inputs_embeds(model, batch):
    captured = {}

    def hook(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    return captured["inputs_embeds"]


def test_item_embeddings_replace_exactly_the_item_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = recommendation_batch(tokenizer, model)
    spliced = capture_inputs_embeds(model, batch)
    plain = model.get_input_embeddings()(batch["input_ids"])
    item_mask = batch["input_ids"] == model.config.item_token_id
    assert torch.equal(spliced[~item_mask], plain[~item_mask])
    with torch.no_grad():
        items = model.encode_items(batch["text_features"], batch["vision_features"], batch["id_features"],
                                   batch["modality_mask"])
        expected = model.model.add_history_positions(items, batch["history_positions"])
    assert torch.allclose(spliced[item_mask], expected, atol=1e-6)
    assert not torch.allclose(spliced[item_mask], plain[item_mask])


def test_cached_item_embeddings_give_identical_logits(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = recommendation_batch(tokenizer, model)
    with torch.no_grad():
        from_features = model(**batch).logits
        cache = model.encode_items(batch["text_features"], batch["vision_features"], batch["id_features"],
                                   batch["modality_mask"])
        from_cache = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           item_embeddings=cache, history_positions=batch["history_positions"]).logits
    assert torch.equal(from_features, from_cache)


def test_item_count_mismatch_names_both_counts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = recommendation_batch(tokenizer, model)
    num_items = batch["modality_mask"].shape[0]
    short = {**batch, **item_inputs(num_items - 1, history_positions=batch["history_positions"][:-1])}
    with pytest.raises(ValueError, match=f"{num_items} <item> tokens but {num_items - 1} items"):
        model(**short)


def test_item_rows_outside_the_given_items_name_their_range(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = recommendation_batch(tokenizer, model)
    num_items = batch["modality_mask"].shape[0]
    rows = torch.arange(num_items)
    with torch.no_grad():
        assert torch.equal(model(**batch, item_rows=rows).logits, model(**batch).logits)
    rows[-1] = num_items
    with pytest.raises(ValueError, match=f"index the {num_items} given items, got values in 0..{num_items}"):
        model(**batch, item_rows=rows)


def test_absent_modality_gets_no_gradient_and_does_not_change_output():
    model, tokenizer = tiny_model(gate_type="none")
    batch = recommendation_batch(tokenizer, model)
    no_vision = batch["modality_mask"].clone()
    no_vision[:, 1] = False
    batch["modality_mask"] = no_vision
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for layer in model.model.item_encoder.layers:
        if "vision" in layer.experts:
            assert all(p.grad is None for p in layer.experts["vision"].parameters())
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.experts["text"].parameters())
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
        changed = model(**{**batch, "vision_features": batch["vision_features"] * 10 + 3}).logits
    assert torch.equal(reference, changed)


def test_tanh_gate_starts_closed_and_opens_after_one_step():
    model, tokenizer = tiny_model(gate_type="tanh")
    batch = recommendation_batch(tokenizer, model)
    other_vision = {**batch, "vision_features": torch.randn_like(batch["vision_features"])}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**other_vision).logits)
    optimizer = torch.optim.SGD(model.model.item_encoder.parameters(), lr=1.0)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, model(**other_vision).logits)


def test_aligned_item_embeddings_have_the_token_embeddings_mean_and_variance():
    model, _ = tiny_model()
    inputs = item_inputs(60, seed=3)
    tokens = model.get_input_embeddings().weight.detach()
    token_mean = tokens.mean(0)
    with torch.no_grad():
        before = model.encode_items(**{k: v for k, v in inputs.items() if k != "history_positions"})
    assert not torch.allclose(before.mean(0), token_mean, atol=1e-3)
    statistics = model.model.align_item_embeddings(**{k: v for k, v in inputs.items() if k != "history_positions"})
    with torch.no_grad():
        after = model.encode_items(**{k: v for k, v in inputs.items() if k != "history_positions"})
    assert torch.allclose(after.mean(0), token_mean, atol=1e-4)
    variance = (after - after.mean(0)).pow(2).sum(-1).mean()
    assert variance.item() == pytest.approx(statistics["token_variance"], rel=1e-4)
    assert variance.item() == pytest.approx((tokens - token_mean).pow(2).sum(-1).mean().item(), rel=1e-4)
    one_item = {k: v[:1] for k, v in inputs.items() if k != "history_positions"}
    with pytest.raises(ValueError, match="at least 2 items"):
        model.model.align_item_embeddings(**one_item)


def test_items_behind_closed_gates_align_on_their_open_gate_spread():
    # ID only behind a zero-init tanh gate: every item encodes alike until the gate opens
    model, _ = tiny_model(gate_type="tanh")
    id_only = torch.tensor([[False, False, True]]).expand(40, -1)
    inputs = {k: v for k, v in item_inputs(40, modality_mask=id_only, seed=5).items() if k == "id_features"}
    inputs["modality_mask"] = id_only
    with torch.no_grad():
        closed = model.encode_items(**inputs)
    assert torch.allclose(closed, closed[:1].expand_as(closed))
    statistics = model.model.align_item_embeddings(**inputs)
    with torch.no_grad():
        opened = model.model.encode_items(**inputs, open_gates=True)
    variance = (opened - opened.mean(0)).pow(2).sum(-1).mean()
    assert variance.item() == pytest.approx(statistics["token_variance"], rel=1e-4)


def test_history_positions_reach_history_items_only(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    items = torch.randn(5, model.config.hidden_size)
    positions = torch.tensor([1, 2, 3, 0, 0])
    table = model.model.history_position_embeddings.weight
    added = model.model.add_history_positions(items, positions)
    assert torch.allclose(added[:3], items[:3] + table[:3])
    assert torch.equal(added[3:], items[3:])
    table.grad = None
    model.model.add_history_positions(items, positions).sum().backward()
    assert table.grad[:3].abs().sum() > 0
    assert torch.equal(table.grad[3:], torch.zeros_like(table.grad[3:]))  # rows past n stay unused
    with pytest.raises(ValueError, match="max_history_length"):
        model.model.add_history_positions(items, torch.tensor([TINY_MODEL_KWARGS["max_history_length"] + 1] * 5))


@pytest.mark.parametrize(
    "field, value, message",
    [("gate_type", "sigmoid", "gate_type must be one of"), ("modalities", ["audio"], "modalities must be"),
     ("fusion_num_attention_heads", 5, "divisible"), ("fusion_dropout", 1.5, "fusion_dropout")],
)
def test_config_rejects_invalid_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        SpeederConfig(**{field: value})


class OnlyTokens(LogitsProcessor):
    def __init__(self, token_ids):
        self.token_ids = token_ids

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.token_ids] = 0
        return scores + mask


def test_generate_and_score_candidates_choose_the_same_candidate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    features = ItemFeatureTable(
        {m: torch.randn(20, TINY_MODEL_KWARGS[f"{m}_feature_size"]) for m in ("text", "vision", "id")},
        {m: torch.ones(20, dtype=torch.bool) for m in ("text", "vision", "id")},
    )
    rows = [{"history": list(range(i, i + 2 + i % 4)), "candidates": [10, 11, 12, 13, 14][i % 5:] + [10, 11, 12, 13,
             14][: i % 5], "label": 0} for i in range(6)]
    collator = SpeederProcessor.from_model_config(model.config, tokenizer).with_items(
        features, with_answer=False, padding_side="left")
    batch = collator(rows)
    scores = model.score_candidates(**batch)
    labels = model.config.candidate_label_token_ids
    output = model.generate(**batch, max_new_tokens=1, do_sample=False,
                            logits_processor=LogitsProcessorList([OnlyTokens(labels)]))
    generated = [labels.index(t) for t in output[:, batch["input_ids"].shape[1]].tolist()]
    assert generated == scores.argmax(-1).tolist()


def test_a_generated_item_token_is_plain_text_in_the_next_decode_step(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = model.prompt_builder(tokenizer).recommendation(history_length=3, num_candidates=5)
    inputs = {"input_ids": torch.tensor([prompt.input_ids]), **item_inputs(prompt.num_items),
              "history_positions": torch.tensor(prompt.history_positions)}
    forced = LogitsProcessorList([OnlyTokens([model.config.item_token_id])])  # the first answer token is <item>
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False, logits_processor=forced)
    assert output[0, len(prompt.input_ids):].tolist() == [model.config.item_token_id] * 3


def lora_model(model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                        modules_to_save=["item_encoder", "history_position_embeddings"])
    return get_peft_model(model, config)


def test_sft_trainer_steps_train_every_speeder_part(tmp_path):
    from trl import SFTTrainer

    model, tokenizer = tiny_model()
    peft_model = lora_model(model)
    features = ItemFeatureTable(
        {m: torch.randn(20, TINY_MODEL_KWARGS[f"{m}_feature_size"]) for m in ("text", "vision", "id")},
        {m: torch.ones(20, dtype=torch.bool) for m in ("text", "vision", "id")},
    )
    with pytest.warns(DeprecationWarning, match="SpeederProcessor"):  # the old collator: the processor, bound
        collator = SpeederCollator(model.prompt_builder(tokenizer), features, ("text", "vision", "id"), max_history=8)
    rows = Dataset.from_list([{"history": [i % 20, (i + 1) % 20, (i + 2) % 20], "candidates": [1, 5, 9, 13, 17],
                               "label": i % 5, "ppt_positions": [], "ppt_label": ""} for i in range(8)])
    # LoRA's B matrices and the tanh gates start at zero, so the first step moves neither LoRA's A nor the non-text
    # adapters behind the gates; the second step does. Nudge B so that A moves too.
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    args = SpeederSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, learning_rate=1e-2,
                            bf16=False, report_to="none", save_strategy="no", logging_steps=1, warmup_steps=0)
    trainer = SFTTrainer(model=peft_model, args=args, train_dataset=rows, data_collator=collator,
                         processing_class=tokenizer)
    batch = collator([rows[i] for i in range(8)])
    with torch.no_grad():
        peft_model.eval()
        own_loss = peft_model(**batch).loss.item()
    trainer.train()
    trainer_loss = trainer.state.log_history[0]["loss"]
    assert trainer_loss == pytest.approx(own_loss, rel=1e-3)  # first step: the weights `own_loss` was computed with
    changed = {n for n, p in peft_model.named_parameters() if n in before and not torch.equal(before[n], p)}
    for part in ("adapters.text", "adapters.vision", "adapters.id", "gates.vision", "gates.id", "experts.text",
                 "experts.vision", "experts.id", "experts.multimodal", "attention", "output_adapter",
                 "history_position_embeddings", "lora_A", "lora_B"):
        assert any(part in n for n in changed), f"{part} did not change in two SFTTrainer steps"


def test_remote_code_round_trip_gives_identical_logits(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    assert {"configuration_speeder.py", "modeling_speeder.py", "prompt_speeder.py"} <= {
        p.name for p in (tmp_path / "model").iterdir()}
    auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM"} <= set(auto_map)
    batch = recommendation_batch(tokenizer, model)
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "expected.pt")
    output = run_isolated(f"""
        import torch
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)
        assert tokenizer.convert_tokens_to_ids("<item>") == model.config.item_token_id
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / 'batch.pt')!r})).logits
        print(torch.equal(logits, torch.load({str(tmp_path / 'expected.pt')!r})))
    """)
    assert output.strip() == "True"


def test_peft_adapter_round_trip_gives_identical_logits(tmp_path):
    model, tokenizer = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "base")  # a random-init base must travel with its adapter
    tokenizer.save_pretrained(tmp_path / "base")
    peft_model = lora_model(model)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    batch = recommendation_batch(tokenizer, model)
    torch.save(batch, tmp_path / "batch.pt")
    peft_model.eval()
    with torch.no_grad():
        torch.save(peft_model(**batch).logits, tmp_path / "expected.pt")
    output = run_isolated(f"""
        import torch
        from peft import PeftModel
        from transformers import AutoModel
        base = AutoModel.from_pretrained({str(tmp_path / 'base')!r}, trust_remote_code=True)
        model = PeftModel.from_pretrained(base, {str(tmp_path / 'adapter')!r}).eval()
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / 'batch.pt')!r})).logits
        print(torch.allclose(logits, torch.load({str(tmp_path / 'expected.pt')!r}), atol=1e-6))
    """)
    assert output.strip() == "True"


def cold_start_model(num_items: int = 6):
    """A fresh tiny model whose item cache holds `item0`..`item<n-1>`, encoded from random text features."""
    model, tokenizer = tiny_model()
    model.eval().add_items([f"item{i}" for i in range(num_items)], text_features=item_inputs(num_items)["text_features"])
    return model, tokenizer


def test_add_items_takes_numpy_features_and_masks():
    model, _ = cold_start_model()
    inputs = item_inputs(2, modality_mask=torch.tensor([[True, False, True], [True, True, True]]), seed=1)
    expected = model.encode_items(**inputs)
    added = model.add_items(["new0", "new1"], **{k: v.numpy() for k, v in inputs.items()})
    torch.testing.assert_close(added, expected)
    assert "new1" in model.item_cache and len(model.item_cache) == 8


def test_add_items_refuses_non_finite_features_naming_the_items():
    model, _ = cold_start_model()
    inputs = item_inputs(3, seed=1)
    inputs["vision_features"][1, 4] = float("nan")
    inputs["vision_features"][2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"vision_features of items \['b', 'c'\] hold non-finite values"):
        model.add_items(["a", "b", "c"], **inputs)
    assert len(model.item_cache) == 6 and "a" not in model.item_cache  # nothing was added


def test_add_items_names_a_wrong_modality_mask_shape():
    model, _ = cold_start_model()
    inputs = item_inputs(2, modality_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"modality_mask has shape \(2, 2\), expected \(2, 3\)"):
        model.add_items(["a", "b"], **inputs)


@pytest.mark.parametrize("history", [{"item0", "item1"}, frozenset({"item0"}), {"item0": 1, "item1": 2}])
def test_recommend_refuses_an_unordered_history(history):
    model, tokenizer = cold_start_model()
    with pytest.raises(ValueError, match="history order matters: pass a list, oldest first"):
        model.recommend(history, ["item2", "item3"], tokenizer=tokenizer)


def test_recommend_names_the_items_whose_cached_embeddings_are_not_finite(tmp_path):
    model, tokenizer = cold_start_model()
    cache = model.item_cache
    cache.embeddings[3] = float("nan")  # e.g. an item cache file written before add_items checked its features
    cache.save(tmp_path)
    model.load_item_cache(tmp_path)
    assert model.recommend(["item0", "item1"], ["item2", "item4"], tokenizer=tokenizer)  # item3 unused: fine
    with pytest.raises(ValueError, match=r"embeddings of items \['item3'\] .*are not finite"):
        model.recommend(["item0", "item1"], ["item2", "item3"], tokenizer=tokenizer)
