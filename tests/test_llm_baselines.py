"""LLaRA-style and zero-shot LLM baselines: they run on the stored pools and report the paper's metrics."""

import json

import pytest

from speeder_fixtures import write_planted_dataset

from modeling_speeder import ItemFeatureTable, LlaraPromptBuilder, SpeederProcessor
from modeling_speeder.backbones import build_speeder_model
from trainer import llm_baselines
from trainer.llm_baselines import main, train_llara, zero_shot


def test_title_prompts_carry_no_item_tokens_and_answer_with_a_title():
    _, tokenizer = build_speeder_model("tiny")
    processor = SpeederProcessor(tokenizer, max_history_length=3, prompt_style="titles")
    builder = processor.prompt_builder
    collator = processor.with_items(None, titles=[f"item {i}" for i in range(10)])
    batch = collator([{"history": [1, 2, 3, 4], "candidates": [5, 6, 7], "label": 1}])
    assert builder.item_token_id not in batch["input_ids"][0].tolist()
    answer = batch["labels"][batch["labels"] != -100].tolist()
    assert answer == builder.title_ids("item 6") + [tokenizer.eos_token_id]
    assert builder.parse_answer(answer, ["item 5", "item 6", "item 7"]) == 1


def test_llara_and_zero_shot_write_paper_metrics(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=30, modalities=("text", "id"))
    llara = train_llara(data_dir, backbone="tiny", max_history=4, max_train_samples=8, max_eval_samples=4,
                        batch_size=4, output_dir=str(tmp_path / "llara"))
    shot = zero_shot(data_dir, backbone="tiny", max_history=4, max_eval_samples=4, batch_size=4)
    for name, report in (("llara", llara), ("zero_shot", shot)):
        saved = json.loads((data_dir / "baselines" / f"{name}.json").read_text())
        assert saved["test_metrics"] == report["test_metrics"]
        metrics = report["test_metrics"]
        assert 0.0 <= metrics["valid_ratio"] <= 1.0 and metrics["num_samples"] == 3  # the whole test split
        assert metrics["vhr@1"] == pytest.approx(metrics["valid_ratio"] * metrics["hr@1"])


def test_an_interrupted_llara_run_goes_on_from_its_last_checkpoint(tmp_path, monkeypatch):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=30, modalities=("text", "id"))
    common = dict(backbone="tiny", max_history=4, max_train_samples=8, max_eval_samples=4, batch_size=4,
                  output_dir=str(tmp_path / "llara"), save_steps=1)
    train_llara(data_dir, num_train_epochs=1.0, **common)  # 2 steps: stands for a run stopped at step 2 of 4
    assert [p.name for p in (tmp_path / "llara").glob("checkpoint-*")] == ["checkpoint-2"]
    resumed_from = []
    train = llm_baselines.SpeederSFTTrainer.train

    def recording_train(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(llm_baselines.SpeederSFTTrainer, "train", recording_train)
    train_llara(data_dir, num_train_epochs=2.0, **common)
    assert resumed_from == [str(tmp_path / "llara" / "checkpoint-2")]
    assert [p.name for p in (tmp_path / "llara").glob("checkpoint-*")] == ["checkpoint-4"]


def test_llm_baselines_have_their_command_and_the_baselines_command_names_it(tmp_path, capsys):
    from baselines.__main__ import main as id_baselines_main

    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text", "id"))
    with pytest.raises(SystemExit):
        id_baselines_main([str(data_dir), "--models", "zero_shot"])
    assert "python -m trainer.llm_baselines" in capsys.readouterr().err
    assert main([str(data_dir), "--models", "zero_shot", "--backbone", "tiny", "--max-history", "4",
                 "--max-eval-samples", "2"]) == 0
    assert json.loads((data_dir / "baselines" / "zero_shot.json").read_text())["test_metrics"]["num_samples"] == 2


def test_llara_gives_every_item_its_sasrec_row_even_one_unseen_in_training():
    import torch

    _, tokenizer = build_speeder_model("tiny")
    present = torch.ones(10, dtype=torch.bool)
    present[6] = False  # never in the train split: SASRec did not train its row
    features = ItemFeatureTable({"id": torch.randn(10, 8)}, {"id": present})
    processor = SpeederProcessor(tokenizer, max_history_length=3, prompt_style="llara")
    assert isinstance(processor.prompt_builder, LlaraPromptBuilder)
    collator = processor.with_items(features, ("id",), titles=[f"item {i}" for i in range(10)])
    batch = collator([{"history": [1, 2, 3], "candidates": [5, 6, 7], "label": 1}])
    assert batch["modality_mask"][:, 2].all() and not batch["modality_mask"][:, :2].any()
    assert torch.equal(batch["id_features"][batch["item_rows"][4]], features.features["id"][6])
