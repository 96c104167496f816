"""The user token (`--user_token`, A-LLMRec's idea): SASRec's state after the history as one `<user>` soft token in
every prompt, from the prompt and the splice to a trained run's export that ranks like the trained model."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from speeder_fixtures import TINY_MODEL_KWARGS, run_isolated, tiny_model, write_planted_dataset

from datasets_builder.build import load_built_dataset
from hub_upload import __main__ as cli
from hub_upload.export import read_run
from modeling_speeder import ItemFeatureTable, SpeederProcessor, SpeederSASRecRetriever
from trainer.model_building import build_model
from trainer.run import main as train
from trainer.training_data import USER_ENCODER_FILE, load_features, user_encoder

NUM_ITEMS = 30
USER_SIZE = 6


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = tiny_model(user_token=True, user_feature_size=USER_SIZE)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def users():
    torch.manual_seed(0)
    return SpeederSASRecRetriever([f"item{i}" for i in range(NUM_ITEMS)], hidden_size=USER_SIZE, n_heads=2,
                                  inner_size=12, max_seq_length=TINY_MODEL_KWARGS["max_history_length"])


def feature_table() -> ItemFeatureTable:
    generator = torch.Generator().manual_seed(1)
    sizes = {m: TINY_MODEL_KWARGS[f"{m}_feature_size"] for m in ("text", "vision", "id")}
    return ItemFeatureTable({m: torch.randn(NUM_ITEMS, d, generator=generator) for m, d in sizes.items()},
                            {m: torch.ones(NUM_ITEMS, dtype=torch.bool) for m in sizes})


def processor(model, tokenizer, users):
    return SpeederProcessor.from_model_config(model.config, tokenizer).with_items(feature_table(), users=users)


ROWS = [{"history": [1, 2, 3], "candidates": [4, 5, 6, 7, 8], "label": 2},
        {"history": [9, 10, 11, 12, 13], "candidates": [14, 15, 16, 17, 18], "label": 0},
        {"history": [1, 2, 3, 4], "ppt_positions": [0, 1, 3], "ppt_label": "yes"}]


def test_every_prompt_starts_with_one_user_token_in_words_the_tokenizer_knows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    builder = model.prompt_builder(tokenizer)
    assert builder.user_token_id == model.config.user_token_id != model.config.item_token_id
    for prompt in (builder.recommendation(3, 5, answer=1), builder.ppt(4, answer="no")):
        assert prompt.input_ids.count(model.config.user_token_id) == 1
        assert tokenizer.unk_token_id not in prompt.input_ids
        text = tokenizer.decode(prompt.input_ids)
        assert text.index("<user>") < text.index("<item>")
    plain, plain_tokenizer = tiny_model()
    assert plain.model.user_projector is None and plain.config.user_token_id is None
    assert "<user>" not in plain_tokenizer.decode(plain.prompt_builder(plain_tokenizer).recommendation(3, 5).input_ids)


def test_user_features_fill_the_user_token_and_nothing_else(model_and_tokenizer, users):
    model, tokenizer = model_and_tokenizer
    batch = processor(model, tokenizer, users)(ROWS)
    assert batch["user_features"].shape == (3, USER_SIZE)
    assert torch.equal(batch["user_features"], users.user_features([row["history"] for row in ROWS], by_row=True))
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"].detach()), with_kwargs=True)
    with torch.no_grad():
        model(**batch)
        plain = model.get_input_embeddings()(batch["input_ids"])
        user_mask = batch["input_ids"] == model.config.user_token_id
        spliced = (batch["input_ids"] == model.config.item_token_id) | user_mask
        assert torch.equal(captured["embeds"][~spliced], plain[~spliced])
        assert torch.allclose(captured["embeds"][user_mask], model.model.encode_users(batch["user_features"]))
        other = dict(batch, user_features=batch["user_features"].flip(0))
        model(**other)
    hook.remove()
    assert not torch.allclose(captured["embeds"][user_mask], model.model.encode_users(batch["user_features"]))


def test_a_prompt_with_a_user_token_but_no_user_features_is_refused(model_and_tokenizer, users):
    model, tokenizer = model_and_tokenizer
    batch = processor(model, tokenizer, users)(ROWS[:2])
    with pytest.raises(ValueError, match="no user_features were given"):
        model(**{k: v for k, v in batch.items() if k != "user_features"})
    with pytest.raises(ValueError, match="one row of user_features"):
        model(**dict(batch, user_features=batch["user_features"][:1]))
    with pytest.raises(ValueError, match="users=..."):
        processor(model, tokenizer, None)(ROWS[:2])


def test_pools_scored_together_score_as_one_by_one(model_and_tokenizer, users):
    model, tokenizer = model_and_tokenizer
    bound = processor(model, tokenizer, users)
    rows = [{"history": h, "candidates": list(range(c, c + 5))} for h in ([1, 2, 3], [7, 8]) for c in (10, 20)]
    grouped = model.score_candidates(**bound(rows, with_answer=False, padding_side="left"), group_size=2)
    alone = torch.cat([model.score_candidates(**bound([row], with_answer=False, padding_side="left")) for row in rows])
    assert torch.allclose(grouped, alone, atol=1e-5)


def test_aligned_user_tokens_have_the_token_embeddings_mean_and_spread():
    model, _ = tiny_model(user_token=True, user_feature_size=USER_SIZE)
    features = torch.randn(64, USER_SIZE, generator=torch.Generator().manual_seed(2))
    model.model.align_user_embeddings(features)
    with torch.no_grad():
        users, tokens = model.model.encode_users(features), model.get_input_embeddings().weight
        assert torch.allclose(users.mean(0), tokens.mean(0), atol=1e-4)
        spread = lambda x: (x - x.mean(0)).pow(2).sum(-1).mean()  # noqa: E731
        assert spread(users).item() == pytest.approx(spread(tokens).item(), rel=1e-4)


def test_the_user_encoder_reads_ids_and_rows_alike_and_scores_with_its_state(users):
    ids = [["item1", "item2", "item3"], ["item9"]]
    by_id = users.user_features(ids + [["item4", "a new item"]])
    by_row = users.user_features([[1, 2, 3], [9], [4]], by_row=True)
    assert torch.equal(by_id, by_row)
    assert torch.allclose(users.user_features(ids) @ users.item_embedding.weight[1:].T, users.score(ids))
    with pytest.raises(ValueError, match="no item the user encoder"):
        users.user_features([["a new item"]])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user_token")
    data_dir = write_planted_dataset(root / "data")
    train(["--data_dir", str(data_dir), "--output_dir", str(root / "run"), "--stages", "1,3", "--user_token", "true",
           "--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
           "--num_train_epochs", "1", "--max_train_samples", "24", "--ppt_per_sequence", "0.5",
           "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none", "--bf16", "false",
           "--save_strategy", "no", "--eval_strategy", "no", "--eval_generate", "false", "--max_eval_samples", "8"])
    return root / "run"


def test_a_user_token_run_trains_the_projector_in_every_stage_with_one_encoder(run_dir):
    encoder_file = run_dir / USER_ENCODER_FILE
    assert encoder_file.is_file()
    stamp = encoder_file.stat().st_mtime_ns
    run = read_run(run_dir, 3)
    args = run.arguments()
    assert args.user_token
    assert user_encoder(args.data_dir, run_dir) is not None and encoder_file.stat().st_mtime_ns == stamp  # reused
    fresh, _ = build_model(args, load_features(args.data_dir, args), run.config["seed"], None,
                           users=user_encoder(args.data_dir, run_dir))
    start = next(v for k, v in fresh.get_base_model().model.user_projector.state_dict().items()
                 if k.endswith("2.weight"))
    for stage in (1, 3):
        weights = load_file(str(run_dir / f"stage{stage}" / "adapter" / "adapter_model.safetensors"))
        trained = {k: v for k, v in weights.items() if ".user_projector." in k}
        assert len(trained) == 4, sorted(trained)
        last = next(v for k, v in trained.items() if k.endswith("2.weight"))
        assert not torch.allclose(last, start)


def test_the_export_ships_the_user_encoder_and_ranks_like_the_trained_model(run_dir, tmp_path):
    out = tmp_path / "export"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    shipped = SpeederSASRecRetriever.from_file(out / "retriever_sasrec.safetensors")
    trained = SpeederSASRecRetriever.from_file(run_dir / USER_ENCODER_FILE)
    assert shipped.item_ids == trained.item_ids and shipped.config == trained.config
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), trained.state_dict().values()))
    run = read_run(run_dir, 3)
    args = run.arguments()
    features = load_features(args.data_dir, args)
    users = user_encoder(args.data_dir, run_dir)
    model, tokenizer = build_model(args, features, run.config["seed"], run.adapter_dir, users=users)
    collator = SpeederProcessor.from_model_config(model.get_base_model().config, tokenizer).with_items(
        features, run.stage_metrics["modalities"], with_answer=False, users=users)
    sequences, items, _ = load_built_dataset(args.data_dir)
    rows = list(sequences["test"])
    scores = model.get_base_model().eval().score_candidates(**collator(rows)).tolist()
    item_id = items["item_id"]
    samples = [{"history": [item_id[i] for i in row["history"]], "candidates": [item_id[i] for i in row["candidates"]],
                "scores": sorted(row_scores, reverse=True)} for row, row_scores in zip(rows, scores)]
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    output = run_isolated(f"""
        import json
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
        samples = json.load(open({str(tmp_path / 'samples.json')!r}))
        print(json.dumps([[s for _, s in model.recommend(x["history"], x["candidates"])] for x in samples]))
    """)
    served = json.loads(output.strip().splitlines()[-1])
    assert len(served) == len(samples) > 0
    for sample, ranked in zip(samples, served):
        assert ranked == pytest.approx(sample["scores"], abs=1e-4)
    (out / "retriever_sasrec.safetensors").unlink()
    output = run_isolated(f"""
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
        try:
            model.recommend({samples[0]["history"]!r}, {samples[0]["candidates"]!r})
            print("ranked without its user encoder")
        except ValueError as error:
            print(error)
    """)
    assert "reads a <user> token made by the SASRec model it was trained with" in output
