"""The MPO trainer: stages end to end, the stage table, resume, ablation switches, metrics and bad input."""

import json
import runpy
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from speeder_fixtures import chance_bound, learning_bf16, learning_seed, write_planted_dataset, write_salient_dataset
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import get_last_checkpoint

import datasets_builder.features
import trainer
from datasets_builder import (BuildConfig, SyntheticConfig, build_dataset, compute_item_features,
                              generate_synthetic_dataset)
from datasets_builder.build import load_built_dataset, train_subset
from metrics import compute_choice_metrics, compute_ranking_metrics
from modeling_speeder import IGNORE_INDEX, SpeederProcessor
from trainer.arguments import ABLATIONS, SpeederArguments, SpeederSFTConfig
from trainer.callbacks import NonFiniteTrainingError
from trainer.training_data import history_prefix_rows, load_features, training_rows
from trainer.model_building import build_model
from trainer.sft_trainer import SpeederSFTTrainer, warmup_cosine
from trainer.run import main
from trainer.stages import STAGES, apply_stage, check_frozen_unchanged, frozen_fingerprints

TINY = ["--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
        "--eval_generate", "false", "--max_eval_samples", "8", "--logging_steps", "1", "--bf16", "false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_planted_dataset(tmp_path_factory.mktemp("data"), num_sequences=40)


def run(data_dir, output_dir, *extra):
    return main(["--data_dir", str(data_dir), "--output_dir", str(output_dir), *TINY, *extra])


def tiny_args(data_dir, **overrides) -> SpeederArguments:
    values = dict(data_dir=str(data_dir), fusion_hidden_size=32, fusion_intermediate_size=64, max_history=8)
    return SpeederArguments(**{**values, **overrides}).resolved()


def test_three_stages_run_end_to_end_and_rerun_skips_them(data_dir, tmp_path, capsys):
    results = run(data_dir, tmp_path, "--max_steps", "3", "--report_to", "tensorboard")
    assert sorted(results["stages"]) == ["1", "2", "3"]
    assert results["stages"]["1"]["modalities"] == ["text"]
    assert results["stages"]["3"]["modalities"] == ["text", "vision", "id"]
    assert 0.0 <= results["test"]["hr@1"] <= 1.0 and "ndcg@5" in results["test"]
    for stage in (1, 2, 3):
        folder = tmp_path / f"stage{stage}"
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()
        assert (folder / "training_curve.png").stat().st_size > 0
        assert "loss" in (folder / "log.csv").read_text().splitlines()[0]
        assert list(folder.glob("runs/*/events.out.tfevents.*"))
    assert "| Speeder, stage 3 (test) |" in (tmp_path / "results.md").read_text()
    capsys.readouterr()
    rerun = run(data_dir, tmp_path, "--max_steps", "3", "--report_to", "tensorboard")
    assert capsys.readouterr().out.count("already finished") == 3
    assert rerun["test"] == results["test"]


def test_each_stage_starts_from_the_previous_stage_weights(data_dir, tmp_path):
    run(data_dir, tmp_path, "--max_steps", "2")
    stage1 = load_file(str(tmp_path / "stage1" / "adapter" / "adapter_model.safetensors"))
    args = tiny_args(data_dir)
    model, _ = build_model(args, load_features(str(data_dir), args), 42, tmp_path / "stage1" / "adapter")
    loaded = {n: p for n, p in model.named_parameters() if "text.fc1" in n and "modules_to_save" in n}
    saved = {n: t for n, t in stage1.items() if "text.fc1" in n}
    assert loaded and len(loaded) == len(saved)
    for name, tensor in saved.items():
        match = [p for n, p in loaded.items() if n.endswith(name.split("item_encoder.")[-1])]
        assert any(torch.equal(p.detach(), tensor) for p in match)


def test_stage_table_trains_only_its_groups(data_dir):
    args = tiny_args(data_dir)
    model, _ = build_model(args, load_features(str(data_dir), args), 0, None)
    stage1 = apply_stage(model, STAGES[1])
    assert any("adapters.text" in n for n in stage1) and any("experts.text" in n for n in stage1)
    assert any("lora_A" in n for n in stage1) and any("history_position_embeddings" in n for n in stage1)
    for frozen in ("adapters.vision", "adapters.id", "experts.multimodal", "attention", "gates", "original_module"):
        assert not any(frozen in n for n in stage1), frozen
    stage2 = apply_stage(model, STAGES[2])
    assert any("gates.vision" in n for n in stage2) and not any("experts.id" in n or "adapters.id" in n for n in stage2)
    stage3 = apply_stage(model, STAGES[3])
    assert any("experts.id" in n for n in stage3) and not any("original_module" in n for n in stage3)


def test_frozen_check_detects_a_changed_tensor(data_dir):
    args = tiny_args(data_dir)
    model, _ = build_model(args, load_features(str(data_dir), args), 0, None)
    apply_stage(model, STAGES[1])
    before = frozen_fingerprints(model)
    check_frozen_unchanged(before, frozen_fingerprints(model))
    with torch.no_grad():
        model.get_base_model().model.language_model.norm.weight.add_(1e-6)
    with pytest.raises(RuntimeError, match="frozen tensors changed"):
        check_frozen_unchanged(before, frozen_fingerprints(model))


def test_interrupted_stage_resumes_to_the_same_weights(data_dir, tmp_path, monkeypatch):
    steps = ["--stages", "1", "--max_steps", "4", "--save_steps", "2"]  # the default save_strategy saves by steps
    run(data_dir, tmp_path / "straight", *steps)

    original = SpeederSFTTrainer.training_step

    def crash_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SpeederSFTTrainer, "training_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, tmp_path / "resumed", *steps)
    assert not (tmp_path / "resumed" / "stage1" / "stage_metrics.json").exists()
    assert get_last_checkpoint(str(tmp_path / "resumed" / "stage1")).endswith("checkpoint-2")
    monkeypatch.setattr(SpeederSFTTrainer, "training_step", original)
    run(data_dir, tmp_path / "resumed", *steps, "--resume", "true")
    straight = load_file(str(tmp_path / "straight" / "stage1" / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "stage1" / "adapter" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:  # same seed, same data order, optimizer and RNG states restored from checkpoint-2
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6)


def test_resume_with_another_config_says_what_differs(data_dir, tmp_path):
    run(data_dir, tmp_path, "--stages", "1", "--max_steps", "1")
    with pytest.raises(ValueError, match=r"lora_r: 8 -> 4"):
        run(data_dir, tmp_path, "--stages", "1", "--max_steps", "1", "--lora_r", "4")


def test_rerun_on_rebuilt_data_says_the_data_differs(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text",))
    run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1")
    run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1")  # same data: the finished stage is skipped
    features = load_file(str(data_dir / "features" / "text.safetensors"))
    save_file({**features, "features": features["features"] + 1}, str(data_dir / "features" / "text.safetensors"))
    with pytest.raises(ValueError, match=r"another config \(data: '[0-9a-f]+' -> '[0-9a-f]+'\)"):
        run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1")


def test_later_stage_without_its_predecessor_is_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="no finished stage 1"):
        run(data_dir, tmp_path, "--stages", "2,3", "--max_steps", "1")


def test_a_run_starts_from_another_runs_adapter(data_dir, tmp_path):
    run(data_dir, tmp_path / "first", "--ablation", "wo_stages12", "--max_steps", "2")
    adapter = tmp_path / "first" / "stage3" / "adapter"
    # a step at learning rate 0 leaves the weights where they started
    run(data_dir, tmp_path / "continued", "--stages", "3", "--init_adapter", str(adapter), "--max_steps", "1",
        "--learning_rate", "0")
    run(data_dir, tmp_path / "fresh", "--ablation", "wo_stages12", "--max_steps", "1", "--learning_rate", "0")
    first = load_file(str(adapter / "adapter_model.safetensors"))
    continued = load_file(str(tmp_path / "continued" / "stage3" / "adapter" / "adapter_model.safetensors"))
    fresh = load_file(str(tmp_path / "fresh" / "stage3" / "adapter" / "adapter_model.safetensors"))
    assert first.keys() == continued.keys() == fresh.keys()
    assert all(torch.equal(first[name], continued[name]) for name in first)
    assert not all(torch.equal(first[name], fresh[name]) for name in first)


def test_training_learns_what_the_item_features_say(tmp_path):
    # targets are always the items whose ID features carry an offset: the item encoder, the splice, LoRA and the
    # answer head must all work together to rise from chance (0.2) to near 1
    data_dir = write_salient_dataset(tmp_path / "data")
    # 1,000 steps over 700 training rows (11 epochs); pass rates over seeds, threads and precisions:
    # results/learning_tests_llm. The encoder trains without a gate at 3x LoRA's rate: at LoRA's rate or below, or
    # behind a shut tanh gate, LoRA can fit the rows before the ID offset reaches it and the run stays near chance
    results = run(data_dir, tmp_path / "run", "--ablation", "wo_stages12", "--gate_type", "none",
                  "--max_steps", "1000", "--seed", str(learning_seed(1)), "--ppt_per_sequence", "0",
                  "--learning_rate", "1e-3", "--item_encoder_learning_rate", "3e-3", "--lora_r", "16", "--lora_alpha",
                  "32", "--max_eval_samples", "40",
                  "--lora_target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                  "--bf16", learning_bf16())
    # the bar is chance's 1-in-1000 binomial bound on the 40 test pools (0.425)
    assert results["test"]["hr@1"] >= chance_bound(results["test"]["num_samples"]), results["test"]


def test_wo_text_starts_fresh_at_the_first_stage_with_data(tmp_path):
    # without text and without images, stages 1 and 2 have no data: stage 3 trains from fresh weights
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text", "id"))
    results = run(data_dir, tmp_path / "run", "--max_steps", "1", "--ablation", "wo_text")
    assert sorted(results["stages"]) == ["3"] and results["stages"]["3"]["modalities"] == ["id"]


def test_stage_adding_a_modality_the_data_lacks_is_skipped(tmp_path, capsys):
    # data without images (MovieLens): stage 2 would only repeat stage 1's text, so stage 3 follows stage 1
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text", "id"))
    results = run(data_dir, tmp_path / "run", "--max_steps", "1")
    assert sorted(results["stages"]) == ["1", "3"] and results["stages"]["3"]["modalities"] == ["text", "id"]
    assert "Stage 2 adds ['vision']" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no finished stage 1: run it first \\(--stages 1,3\\)"):
        run(data_dir, tmp_path / "other", "--stages", "2,3", "--max_steps", "1")


def test_ablation_dropping_a_modality_keeps_its_stage(data_dir, tmp_path):
    # a w/o-vision run trains as many stages, hence steps, as the full run it is compared with
    results = run(data_dir, tmp_path, "--stages", "1,2", "--max_steps", "1", "--drop_modalities", "vision")
    assert sorted(results["stages"]) == ["1", "2"] and results["stages"]["2"]["modalities"] == ["text"]


def test_a_train_subset_is_a_seeded_sample_of_the_whole_split():
    # the split is stored in sequence order, so its head would be a few users' sessions
    train = Dataset.from_dict({"sequence_id": [i // 10 for i in range(200)]})
    subset = train_subset(train, 20, seed=0)
    assert len(subset) == 20 and len(set(subset["sequence_id"])) > 5
    assert subset["sequence_id"] == train_subset(train, 20, seed=0)["sequence_id"]
    assert train_subset(train, None, seed=0) is train and train_subset(train, 500, seed=0) is train


@pytest.mark.parametrize(
    "flag, value, message",
    [("--ablation", "wo_everything", "ablation must be one of"), ("--stages", "1,4", "stages must be"),
     ("--drop_modalities", "audio", "drop_modalities must name"), ("--gate_type", "sigmoid", "gate_type must be"),
     ("--backbone", "no-such-model", "neither a folder nor one of"),
     ("--lora_target_modules", "qq_proj", "its linear layers are"),
     ("--stage_epochs", "4=1", "stage_epochs entries are STAGE=EPOCHS"),
     ("--stage_epochs", "1=0", "stage_epochs entries are STAGE=EPOCHS"),
     ("--prefix_min_history", "-1", "prefix_min_history must be >= 0"),
     ("--init_adapter", "no/such/run/stage3/adapter", "holds no adapter_config.json")],
)
def test_bad_values_fail_before_training_naming_the_valid_ones(data_dir, tmp_path, flag, value, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run(data_dir, tmp_path, flag, value, "--max_steps", "1")
    assert not list(tmp_path.glob("stage*/adapter"))


def test_item_without_features_is_named(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text",))
    features = load_file(str(data_dir / "features" / "text.safetensors"))
    features["present"][3] = False
    save_file(features, str(data_dir / "features" / "text.safetensors"))
    with pytest.raises(ValueError, match=r"Items \[3\] have no features"):
        run(data_dir, tmp_path / "run", "--max_steps", "1", "--stages", "1")


def test_ablation_switches_change_what_they_claim(data_dir):
    assert set(ABLATIONS) >= {"wo_ppt", "wo_ppl", "wo_spae", "wo_stage1", "wo_stages12", "wo_text", "wo_vision",
                              "wo_id", "gate_relu", "gate_none"}
    with_ppt = training_rows(load_sequences(data_dir), tiny_args(data_dir), 0, None)
    without_ppt = training_rows(load_sequences(data_dir), tiny_args(data_dir, ablation="wo_ppt"), 0, None)
    assert sum(1 for r in with_ppt if r["ppt_positions"]) > 0
    assert sum(1 for r in without_ppt if r["ppt_positions"]) == 0 and len(without_ppt) < len(with_ppt)
    args = tiny_args(data_dir, ablation="wo_ppl")
    model, _ = build_model(args, load_features(str(data_dir), args), 0, None)
    assert model.get_base_model().model.history_position_embeddings is None
    args = tiny_args(data_dir, ablation="gate_none")
    model, _ = build_model(args, load_features(str(data_dir), args), 0, None)
    assert len(model.get_base_model().model.item_encoder.gates) == 0
    assert "vision" not in load_features(str(data_dir), tiny_args(data_dir, ablation="wo_vision")).features
    assert tiny_args(data_dir, ablation="wo_stages12").stage_numbers == [3]


def load_sequences(data_dir):
    from datasets import load_from_disk

    return load_from_disk(str(data_dir / "sequences"))


def test_history_prefixes_become_targets_among_the_rows_own_negatives():
    rows = Dataset.from_list([{"history": [10, 11, 12, 13, 14, 15], "candidates": [90, 15, 91, 92, 93], "label": 1},
                              {"history": [20, 21, 22], "candidates": [80, 81, 82, 83, 23], "label": 4}])
    rows = rows.cast_column("history", rows.features["candidates"])
    prefixes = history_prefix_rows(rows, min_history=3, seed=0)
    assert prefixes["history"] == [[10, 11, 12], [10, 11, 12, 13], [10, 11, 12, 13, 14]]  # the short row gives none
    for history, candidates, label, target in zip(prefixes["history"], prefixes["candidates"], prefixes["label"],
                                                  (13, 14, 15)):
        assert candidates[label] == target
        assert [c for i, c in enumerate(candidates) if i != label] == [90, 91, 92, 93]
    assert len(set(prefixes["label"])) > 1 or len(prefixes) < 3  # slots are drawn, not fixed
    assert history_prefix_rows(rows, 3, seed=0)["label"] == prefixes["label"]  # seeded
    args = SpeederArguments(data_dir="unused", prefix_min_history=3, ppt_per_sequence=0.0).resolved()
    assert len(training_rows({"train": rows}, args, seed=0, max_samples=None)) == 2 + 3


def test_ppt_rows_carry_their_eq14_label_and_items_in_shown_order(data_dir):
    args = tiny_args(data_dir)
    model, tokenizer = build_model(args, load_features(str(data_dir), args), 0, None)
    features = load_features(str(data_dir), args)
    collator = SpeederProcessor.from_model_config(model.get_base_model().config, tokenizer).with_items(features, ("text",))
    builder = collator.prompt_builder
    row = load_sequences(data_dir)["ppt_train"][0]
    a, b, c = row["ppt_positions"]
    assert row["ppt_label"] == ("yes" if abs(a - b) <= abs(b - c) else "no")
    prompt, keys = collator.encode(row, with_answer=True)
    items = [item for item, _ in keys]
    assert items == row["history"] + [row["history"][p] for p in (a, b, c)]
    assert prompt.history_positions == list(range(1, len(row["history"]) + 1)) + [0, 0, 0]
    batch = collator([row])
    answer = batch["labels"][batch["labels"] != IGNORE_INDEX]
    assert answer.tolist() == [builder.ppt_answer_token_ids[row["ppt_label"]]]


def test_metrics_on_hand_made_predictions():
    choice = compute_choice_metrics([2, -1, 0, 1, 1], [2, 0, 1, 1, 3])
    assert choice["valid_ratio"] == pytest.approx(4 / 5)
    assert choice["hr@1"] == pytest.approx(2 / 4) and choice["vhr@1"] == pytest.approx(2 / 5)
    ranking = compute_ranking_metrics([[0.9, 0.1, 0.5], [0.2, 0.2, 0.1], [0.1, 0.3, 0.2]], [0, 0, 2], k_values=(1, 2))
    assert ranking["hr@1"] == pytest.approx(1 / 3)  # the tie in row 2 counts against the true item
    assert ranking["hr@2"] == pytest.approx(1.0)
    assert ranking["ndcg@2"] == pytest.approx((1 + 1 / torch.log2(torch.tensor(3.0)).item() * 2) / 3)
    assert ranking["vhr@1"] == ranking["hr@1"] and ranking["valid_ratio"] == 1.0


@pytest.mark.parametrize("item_lr, expected", [(None, 1e-4), (3e-4, 3e-4)])
def test_item_encoder_and_lora_train_at_their_own_learning_rates(data_dir, tmp_path, item_lr, expected):
    args = tiny_args(data_dir, item_encoder_learning_rate=item_lr)
    model, tokenizer = build_model(args, load_features(str(data_dir), args), 0, None)
    apply_stage(model, STAGES[3])
    trainer = SpeederSFTTrainer(model=model, args=SpeederSFTConfig(output_dir=str(tmp_path), learning_rate=1e-3,
                                                                    report_to="none"),
                                train_dataset=Dataset.from_list([{"history": [0]}]), processing_class=tokenizer,
                                speeder_args=args)
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {lr_of[id(p)] for n, p in named if "lora_" in n or ".gates." in n} == {1e-3}
    assert {lr_of[id(p)] for n, p in named if "lora_" not in n and ".gates." not in n} == {expected}
    assert any(".gates." in n for n, _ in named)
    assert any("history_position_embeddings" in n for n, _ in named) and any("item_encoder" in n for n, _ in named)
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the learning rate the Trainer logs is LoRA's


def test_a_fresh_first_stage_starts_from_aligned_item_embeddings(data_dir):
    args = tiny_args(data_dir)
    features = load_features(str(data_dir), args)
    model, _ = build_model(args, features, 0, None, align_modalities=("text",))
    speeder = model.get_base_model()
    inputs = features.gather(torch.arange(features.num_items), ("text",))
    with torch.no_grad():
        items = speeder.encode_items(**inputs)
    token_mean = speeder.get_input_embeddings().weight.mean(0)
    assert torch.allclose(items.mean(0), token_mean, atol=1e-4)
    unaligned, _ = build_model(tiny_args(data_dir, align_item_embeddings=False), features, 0, None, ("text",))
    with torch.no_grad():
        assert not torch.allclose(unaligned.get_base_model().encode_items(**inputs).mean(0), token_mean, atol=1e-3)


def test_learning_rate_warms_up_from_one_hundredth_then_decays():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.01)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)


def test_stage_epochs_size_each_stage(data_dir, tmp_path):
    # 28 training rows + 7 PPT rows (0.25 per row) at batch 8: 5 steps per epoch
    results = run(data_dir, tmp_path, "--stages", "1,2", "--stage_epochs", "1=0.5", "--num_train_epochs", "1",
                  "--ppt_per_sequence", "0.25")
    steps = {stage: max(row.get("step", 0) for row in json.loads((tmp_path / f"stage{stage}" / "log_history.json")
                                                                 .read_text())) for stage in (1, 2)}
    assert results["stages"]["1"]["train_rows"] == results["stages"]["2"]["train_rows"] == 35
    assert (steps[1], steps[2]) == (3, 5)


def test_results_json_is_valid(data_dir, tmp_path):
    run(data_dir, tmp_path, "--stages", "1", "--max_steps", "1")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["final_stage"] == 1 and results["config"]["stages"] == "1"


# --- nothing silently wrong: stale or non-finite features, failed starts, non-finite training, CLI errors ---------


class RandomTextEncoder:
    """Stands in for a sentence encoder: texts -> `[B, 12]`."""

    def __init__(self, *args, **kwargs):
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, texts):
        return torch.randn(len(texts), 12, generator=self.generator)


def random_sasrec(name, data_dir, seed, **kwargs):
    """Stands in for `baselines.train_baseline("sasrec", ...)`: one random `[num_items, 8]` embedding table."""
    _, items, _ = load_built_dataset(data_dir)
    return types.SimpleNamespace(item_embeddings=torch.randn(len(items), 8), test_metrics={})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`build(out, **BuildConfig overrides)` builds the synthetic raw data set as `datasets_builder build` does;
    `features(data_dir)` computes its text and ID features as `datasets_builder features` does (stand-in encoders)."""
    root = tmp_path_factory.mktemp("built")
    generate_synthetic_dataset(root / "raw", SyntheticConfig(
        rule="session-shape", num_users=40, num_items=30, num_shapes=3, sessions_per_user=1, min_session_length=6,
        max_session_length=8, image_size=16, seed=1))
    (root / "encoder").mkdir()
    (root / "encoder" / "config.json").write_text("{}")

    def build(out, **overrides):
        config = BuildConfig(**{"format": "amazon2018", "interactions": str(root / "raw" / "reviews.jsonl"),
                                "metadata": str(root / "raw" / "metadata.jsonl"), "min_item_interactions": 1,
                                "min_sequence_length": 5, **overrides})
        build_dataset(config, out)
        return out

    def features(data_dir):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(datasets_builder.features, "load_encoder", lambda *args, **kwargs: RandomTextEncoder())
            patch.setattr(datasets_builder.features, "baselines",
                           types.SimpleNamespace(train_baseline=random_sasrec, __version__="test"))
            compute_item_features(data_dir, text_encoder=str(root / "encoder"), vision_encoder="none",
                                  id_encoder="sasrec")
        return data_dir

    return types.SimpleNamespace(build=build, features=features)


def test_features_of_another_build_are_refused_naming_the_file_and_the_command(built, tmp_path):
    data_dir = built.features(built.build(tmp_path / "data"))
    run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1")  # features of this build: trains
    old_features = tmp_path / "old-features"
    shutil.copytree(data_dir / "features", old_features)

    built.build(tmp_path / "data", min_item_interactions=8)  # fewer items; the old features stay
    shutil.rmtree(data_dir / "features")
    shutil.copytree(old_features, data_dir / "features")
    _, items, _ = load_built_dataset(data_dir)
    assert len(items) < 30
    with pytest.raises(ValueError, match=rf"text\.safetensors has 30 rows, but .*items has {len(items)} items.*"
                                         r"`python -m datasets_builder features .* --text-encoder .*encoder "
                                         r"--vision-encoder none --id-encoder sasrec`"):
        run(data_dir, tmp_path / "run2", "--stages", "1", "--max_steps", "1")
    assert not (tmp_path / "run2" / "run_config.json").exists()

    built.build(tmp_path / "data", seed=7)  # the same 30 items, other splits: SASRec's rows are stale
    shutil.rmtree(data_dir / "features")
    shutil.copytree(old_features, data_dir / "features")
    with pytest.raises(ValueError, match=r"id\.safetensors was computed from other data .*rebuilt after the "
                                         r"features. Recompute them: `python -m datasets_builder features"):
        run(data_dir, tmp_path / "run3", "--stages", "1", "--max_steps", "1")
    built.features(data_dir)  # the command the message names
    run(data_dir, tmp_path / "run3", "--stages", "1", "--max_steps", "1")


def test_a_feature_file_with_a_nan_column_is_refused(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text", "id"))
    features = load_file(str(data_dir / "features" / "text.safetensors"))
    features["features"][:, 3] = float("nan")
    save_file(features, str(data_dir / "features" / "text.safetensors"))
    with pytest.raises(ValueError, match=r"text\.safetensors holds .*python -m datasets_builder features"):
        run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1", "--align_item_embeddings", "false")
    assert not list(tmp_path.glob("run/stage1/adapter"))


def test_a_failed_start_does_not_refuse_the_corrected_rerun(data_dir, tmp_path):
    steps = ["--stages", "1", "--max_steps", "1"]
    with pytest.raises(FileNotFoundError, match="build the data set first"):  # a typo in --data_dir
        run(tmp_path / "no-such-data", tmp_path / "run", *steps)
    with pytest.raises(ValueError, match="its linear layers are"):  # a typo in the LoRA targets
        run(data_dir, tmp_path / "run", *steps, "--lora_target_modules", "q_prj")
    assert not (tmp_path / "run" / "run_config.json").exists()
    run(data_dir, tmp_path / "run", *steps)
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["data_dir"] == str(data_dir)


def test_features_computed_after_a_failed_start_are_used_by_the_resumed_run(tmp_path):
    data_dir = write_planted_dataset(tmp_path / "data", num_sequences=20, modalities=("text",))
    (data_dir / "features").rename(tmp_path / "features")  # `datasets_builder features` not run yet
    with pytest.raises(FileNotFoundError, match="python -m datasets_builder features"):
        run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1")
    (tmp_path / "features").rename(data_dir / "features")
    results = run(data_dir, tmp_path / "run", "--stages", "1", "--max_steps", "1", "--resume", "true")
    assert results["final_stage"] == 1


def test_a_non_finite_training_loss_stops_the_run_naming_stage_and_step(data_dir, tmp_path, monkeypatch):
    original = SpeederProcessor.__call__

    def nan_features_from_the_third_batch(self, rows, **kwargs):
        batch = original(self, rows, **kwargs)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:  # e.g. a NaN that reached the batch
            batch["text_features"][0] = float("nan")
        return batch

    monkeypatch.setattr(SpeederProcessor, "__call__", nan_features_from_the_third_batch)
    with pytest.raises(NonFiniteTrainingError, match=r"Stage 1, step 3: the training loss \(nan\) is not finite"):
        run(data_dir, tmp_path, "--stages", "1", "--max_steps", "4")
    assert not (tmp_path / "stage1" / "stage_metrics.json").exists()


def test_non_finite_gradients_stop_the_run_naming_stage_and_step(data_dir, tmp_path, monkeypatch):
    original = SpeederSFTTrainer.training_step

    def nan_gradient_at_step_2(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        if self.state.global_step == 1:
            next(p for n, p in model.named_parameters() if "lora_B" in n).grad[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(SpeederSFTTrainer, "training_step", nan_gradient_at_step_2)
    with pytest.raises(NonFiniteTrainingError, match=r"Stage 1, step 2: the gradient of \['.*lora_B.*'\] is not"):
        run(data_dir, tmp_path, "--stages", "1", "--max_steps", "3")


@pytest.mark.parametrize("script, extra", [("run.py", []), ("ablations.py", ["--ablations", "wo_ppt"])])
def test_cli_prints_a_users_mistake_as_one_line_and_exits_2(tmp_path, capsys, monkeypatch, script, extra):
    monkeypatch.setattr(sys, "argv", [script, "--data_dir", str(tmp_path / "no-such-data"), "--output_dir",
                                      str(tmp_path / "run"), *TINY, *extra])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(Path(trainer.__file__).parent / script), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-data" in err and "Traceback" not in err
