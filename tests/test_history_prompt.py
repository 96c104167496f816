"""The one-token-per-history-item prompt (`history_indices=False`) next to the paper's prompt (the default)."""

import json

import pytest
from speeder_fixtures import tiny_model, write_planted_dataset
from transformers import AutoTokenizer

import modeling_speeder.prompt_speeder as prompt_speeder
from datasets_builder.build import pool_size
from hub_upload.export import BASE_CONFIG_KEYS, export_run
from modeling_speeder import ITEM_TOKEN, SpeederForSequentialRec, SpeederPromptBuilder
from modeling_speeder.backbones import cache_dir
from modeling_speeder.prompt_speeder import candidate_labels_for
from trainer.arguments import SpeederArguments
from trainer.run import main

TINY = ["--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
        "--eval_generate", "false", "--max_eval_samples", "8", "--logging_steps", "1", "--bf16", "false"]
LABELS = ("A", "B", "C", "D", "E")
# The paper's prompt text as it was before `history_indices` existed, written out: the default must keep its bytes.
PAPER_RECOMMENDATION = ("The user interacted with these items in order:{history}.\nCandidates:{candidates}."
                        "\nWhich candidate will the user interact with next? Answer:")
PAPER_PPT = ("The user interacted with these items in order:{history}.\nThree of these items, in this order:"
             "<item><item><item>.\nIs the first one at most as far from the second as the second is from the third in "
             "the sequence? Answer:")
SMOLLM2 = cache_dir() / "SmolLM2-135M-Instruct"


def paper_ids(tokenizer, template: str, n: int, m: int = 5) -> list[int]:
    history = "".join(f"{k}{ITEM_TOKEN}" for k in range(1, n + 1))
    candidates = "".join(f" {label}{ITEM_TOKEN}" for label in LABELS[:m])
    return tokenizer(template.format(history=history, candidates=candidates)).input_ids


def tokenizers():
    yield "tiny", tiny_model()[1]
    if (SMOLLM2 / "tokenizer.json").is_file():  # converted by an earlier SmolLM2 run; not built here (slow)
        tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
        tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]})
        yield "smollm2", tokenizer


@pytest.fixture(scope="module", params=list(tokenizers()), ids=lambda p: p[0])
def tokenizer(request):
    return request.param[1]


@pytest.mark.parametrize("n", [1, 3, 12])
def test_default_prompt_is_the_papers_prompt_byte_for_byte(tokenizer, n):
    builder = SpeederPromptBuilder(tokenizer, LABELS)
    assert builder.history_indices is True
    paper = paper_ids(tokenizer, PAPER_RECOMMENDATION, n)
    assert builder.recommendation(n, 5).input_ids == paper
    assert builder.recommendation(n, 5, answer=2).input_ids == paper + [builder.candidate_label_token_ids[2]]
    assert SpeederPromptBuilder(tokenizer, LABELS, history_indices=True).ppt(n, "yes").input_ids == (
        paper_ids(tokenizer, PAPER_PPT, n) + [builder.ppt_answer_token_ids["yes"]])


@pytest.mark.parametrize("n", [1, 3, 12])
def test_one_token_per_history_item(tokenizer, n):
    paper = SpeederPromptBuilder(tokenizer, LABELS)
    compact = SpeederPromptBuilder(tokenizer, LABELS, history_indices=False)
    item = compact.item_token_id
    for build in (lambda b, k: b.recommendation(k, 5, answer=1), lambda b, k: b.ppt(k, "no")):
        prompt = build(compact, n)
        # each further history item adds exactly its <item> token, and the history is n adjacent <item> tokens
        assert len(build(compact, n + 1).input_ids) - len(prompt.input_ids) == 1
        start = prompt.input_ids.index(item)
        assert prompt.input_ids[start:start + n] == [item] * n and prompt.input_ids[start + n] != item
        # the index digits are all that is gone: the paper's prompt is longer by the tokens of "1".."n" alone
        digits = sum(len(tokenizer(str(k), add_special_tokens=False).input_ids) for k in range(1, n + 1))
        assert len(build(paper, n).input_ids) - len(prompt.input_ids) == digits
        before, after = build(paper, n).input_ids, prompt.input_ids
        assert before[:before.index(item) - 1] == after[:start] and before[-3:] == after[-3:]
    # candidates keep their labels: the answer names one
    prompt = compact.recommendation(n, 5, answer=1)
    tail = prompt.input_ids[prompt.input_ids.index(item) + n:]
    labels = [tail[i - 1] for i in range(1, len(tail)) if tail[i] == item]
    assert labels == compact.candidate_label_token_ids
    assert prompt.answer_token_id == compact.candidate_label_token_ids[1]


def test_placeholder_order_and_history_positions_are_unchanged(tokenizer):
    paper = SpeederPromptBuilder(tokenizer, LABELS)
    compact = SpeederPromptBuilder(tokenizer, LABELS, history_indices=False)
    for n in (1, 4, 9):
        for a, b in ((paper.recommendation(n, 5, answer=0), compact.recommendation(n, 5, answer=0)),
                     (paper.ppt(n, "yes"), compact.ppt(n, "yes"))):
            assert b.history_positions == a.history_positions
            assert b.num_items == a.num_items == b.input_ids.count(compact.item_token_id)
            assert b.answer_token_id == a.answer_token_id
    assert compact.recommendation(3, 5).history_positions == [1, 2, 3, 0, 0, 0, 0, 0]


def test_the_model_builds_the_prompt_its_config_names():
    model, tokenizer = tiny_model()
    assert model.config.history_indices is True and model.prompt_builder(tokenizer).history_indices is True
    model, tokenizer = tiny_model(history_indices=False)
    builder = model.prompt_builder(tokenizer)
    assert builder.history_indices is False
    assert builder.recommendation(4, 5).input_ids == SpeederPromptBuilder(
        tokenizer, model.config.candidate_labels, history_indices=False).recommendation(4, 5).input_ids


def test_save_and_load_keep_the_flag(tmp_path):
    model, tokenizer = tiny_model(history_indices=False)
    model.save_pretrained(tmp_path / "compact")
    assert json.loads((tmp_path / "compact" / "config.json").read_text())["history_indices"] is False
    loaded = SpeederForSequentialRec.from_pretrained(tmp_path / "compact")
    assert loaded.config.history_indices is False and loaded.prompt_builder(tokenizer).history_indices is False
    # a folder saved before the flag existed has the paper's prompt
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    del config["history_indices"]
    (tmp_path / "compact" / "config.json").write_text(json.dumps(config))
    assert SpeederForSequentialRec.from_pretrained(tmp_path / "compact").config.history_indices is True
    assert "history_indices" in BASE_CONFIG_KEYS  # the adapter-only export rebuilds its base with the flag


def test_trainer_runs_end_to_end_with_one_token_history(tmp_path, monkeypatch):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=40)
    seen = []
    history_text = prompt_speeder.SpeederPromptBuilder._history_text

    def spy(self, history_length):
        seen.append(self.history_indices)
        return history_text(self, history_length)

    monkeypatch.setattr(prompt_speeder.SpeederPromptBuilder, "_history_text", spy)
    results = main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), *TINY, "--stages", "1",
                    "--max_steps", "2", "--history_indices", "false"])
    assert sorted(results["stages"]) == ["1"] and 0.0 <= results["test"]["hr@1"] <= 1.0
    assert seen and not any(seen)  # every prompt of training and evaluation had no history indices
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["history_indices"] is False
    assert SpeederArguments(data_dir="unused").history_indices is True


def test_candidate_labels_grow_with_the_pool_and_stay_one_token():
    assert candidate_labels_for(5) == ["A", "B", "C", "D", "E"]
    assert candidate_labels_for(3) == ["A", "B", "C", "D", "E"]  # smaller pools use the first labels
    assert candidate_labels_for(20) == list("ABCDEFGHIJKLMNOPQRST")
    with pytest.raises(ValueError, match="--num-candidates"):
        candidate_labels_for(27)


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 not converted here yet")
def test_smollm2_reads_every_label_a_to_z_as_one_token():
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]})
    builder = SpeederPromptBuilder(tokenizer, candidate_labels_for(26))  # raises when a label takes two tokens
    assert len(set(builder.candidate_label_token_ids)) == 26
    assert builder.recommendation(history_length=3, num_candidates=26).num_items == 29


def test_a_model_trained_on_larger_pools_labels_every_candidate_and_retrieves_that_many(tmp_path, monkeypatch):
    """Issue 19 item 2: pools of K = 8 train a model with labels A..H; evaluation scores all 8 and recommend without
    candidates re-ranks 8 retrieved items."""
    monkeypatch.setenv("WANDB_DISABLED", "true")
    data_dir = write_planted_dataset(tmp_path / "data", num_items=24, num_sequences=60, num_candidates=8)
    assert pool_size(data_dir) == 8
    results = main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), "--stages", "1",
                     "--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
                     "--num_train_epochs", "1", "--max_train_samples", "8", "--ppt_per_sequence", "0",
                     "--per_device_train_batch_size", "8", "--report_to", "none", "--bf16", "false",
                     "--save_strategy", "no", "--eval_strategy", "no", "--eval_generate", "false",
                     "--max_eval_samples", "4"])
    assert results["stages"]["1"]["valid"]["num_samples"] == 4
    scores = [json.loads(line)["scores"] for line in
              (tmp_path / "run" / "stage1" / "stage_metrics.predictions.jsonl").read_text().splitlines()]
    assert {len(row) for row in scores} == {8}
    folder = export_run(tmp_path / "run", tmp_path / "export")
    model = SpeederForSequentialRec.from_pretrained(folder).eval()
    assert model.config.candidate_labels == list("ABCDEFGH")
    assert len(model.recommend(["item0", "item1", "item2"])) == 8
