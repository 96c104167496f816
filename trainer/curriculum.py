"""The MPO curriculum: one SFTTrainer run per stage, each starting from the previous stage's saved adapter, then the
test split on the last stage."""

import copy
import json
from pathlib import Path

from accelerate import PartialState
from transformers.trainer_utils import get_last_checkpoint

from datasets_builder.build import load_built_dataset
from metrics.predictions import predictions_path
from modeling_speeder import ItemFeatureTable, SpeederProcessor
from modeling_speeder.file_utils import write_json_atomically

from .arguments import STAGE_SKIPPING_ABLATIONS, SpeederArguments, SpeederSFTConfig, machine_description
from .callbacks import NonFiniteGradientCallback
from .training_data import load_features, modalities_in_data, training_rows, user_encoder
from .evaluation import evaluate_ppt, evaluate_split
from .model_building import ALIGN_MAX_ITEMS, build_model, gate_openness
from .report import plot_training_curve, results_table, write_log
from .run_folder import STAGE_DONE, check_run_config, record_run_config, run_config
from .sft_trainer import SpeederSFTTrainer
from .stages import (STAGES, Stage, apply_stage, check_frozen_unchanged, frozen_fingerprints, introduced_modalities,
                     parse_stage_epochs)


def stage_modalities(stage: Stage, features: ItemFeatureTable) -> tuple[str, ...]:
    return tuple(m for m in stage.modalities if m in features.features)


def run_stage(stage: Stage, args: SpeederArguments, training_args: SpeederSFTConfig, data, features, run_dir: Path,
              previous_adapter: Path | None, users=None) -> dict:
    stage_dir = run_dir / f"stage{stage.number}"
    modalities = stage_modalities(stage, features)
    # each stage draws its own order (and, with a fractional epoch, its own part) of the training rows
    rows = training_rows(data, args, training_args.seed, args.max_train_samples,
                         shuffle_seed=training_args.seed + stage.number)
    model, tokenizer = build_model(args, features, training_args.seed, previous_adapter, align_modalities=modalities,
                                   users=users, align_histories=rows[:ALIGN_MAX_ITEMS]["history"] if users else ())
    trainable = apply_stage(model, stage)
    processor = SpeederProcessor.from_model_config(model.get_base_model().config, tokenizer)
    collator = processor.with_items(features, modalities, users=users)
    features.check_items({i for row in rows for i in row["history"] + row["candidates"]}, modalities)
    stage_args = copy.deepcopy(training_args)
    stage_args.output_dir = str(stage_dir)  # checkpoints, and TensorBoard events under runs/
    stage_args.num_train_epochs = parse_stage_epochs(args.stage_epochs).get(stage.number, stage_args.num_train_epochs)
    before = frozen_fingerprints(model)
    state = PartialState()
    trainer = SpeederSFTTrainer(
        model=model,
        args=stage_args,
        train_dataset=rows,
        eval_dataset=data["valid"],  # read by `evaluate` through eval_sets; given so that --eval_strategy steps works
        data_collator=collator,
        processing_class=tokenizer,
        eval_collator=collator,
        eval_sets={k: data[k] for k in ("valid", "ppt_valid") if k in data},
        speeder_args=args,
        stage=stage.number,
        callbacks=[NonFiniteGradientCallback(stage.number)],
    )
    checkpoint = get_last_checkpoint(str(stage_dir)) if stage_dir.is_dir() else None
    if checkpoint and not args.resume:
        print(f"Stage {stage.number}: {checkpoint} exists but --resume is off: training the stage from its start.")
    print(f"Stage {stage.number} ({stage.name}): modalities {list(modalities)}, {len(rows)} training rows, "
          f"{sum(model.get_parameter(n).numel() for n in trainable):,} trainable parameters")
    if state.is_main_process:  # training starts: the run folder now belongs to this config
        record_run_config(run_dir, run_config(args, training_args))
    trainer.train(resume_from_checkpoint=checkpoint if args.resume else None)
    check_frozen_unchanged(before, frozen_fingerprints(model))
    if state.is_main_process:  # with several processes, one writes the stage's artifacts
        model.save_pretrained(stage_dir / "adapter")
        tokenizer.save_pretrained(stage_dir / "adapter")
        valid = evaluate_split(model, collator, data, "valid", args, predictions_path(stage_dir / STAGE_DONE),
                               desc=f"stage {stage.number} valid")
        if "ppt_valid" in data:
            valid.update(evaluate_ppt(model, collator, data["ppt_valid"], args.eval_batch_size, args.max_eval_samples))
        write_log(trainer.state.log_history, stage_dir)
        plot_training_curve(trainer.state.log_history, stage_dir / "training_curve.png", f"Stage {stage.number}")
        metrics = {"stage": stage.number, "modalities": list(modalities), "train_rows": len(rows),
                   "train_runtime_s": trainer.state.log_history[-1].get("train_runtime"), "valid": valid,
                   "gate_openness": gate_openness(model, features, modalities, training_args.seed)}
        write_json_atomically(stage_dir / STAGE_DONE, metrics)  # written last: marks the stage finished
    state.wait_for_everyone()
    return json.loads((stage_dir / STAGE_DONE).read_text())


def train_stages(args: SpeederArguments, training_args: SpeederSFTConfig) -> dict:
    """Runs the requested MPO stages, then evaluates the last one on the test split; returns the results."""
    args.resolved()
    run_dir = Path(training_args.output_dir)
    state = PartialState()
    # compared before anything loads; recorded by `run_stage` once training starts (a failed start leaves no record)
    check_run_config(run_dir, run_config(args, training_args))
    data, _, _ = load_built_dataset(args.data_dir)
    features = load_features(args.data_dir, args)
    in_data = modalities_in_data(args.data_dir)
    users = None
    if args.user_token:
        if state.is_main_process:
            user_encoder(args.data_dir, run_dir)  # trained once, by one process
        state.wait_for_everyone()
        users = user_encoder(args.data_dir, run_dir)
    stage_metrics, skipped = {}, []
    for number in args.stage_numbers:
        stage = STAGES[number]
        stage_dir = run_dir / f"stage{number}"
        if (stage_dir / STAGE_DONE).exists():
            print(f"Stage {number} already finished in {stage_dir}: skipped.")
            stage_metrics[number] = json.loads((stage_dir / STAGE_DONE).read_text())
            continue
        if not stage_modalities(stage, features):
            print(f"Stage {number}: none of its modalities {list(stage.modalities)} have features: skipped.")
            skipped.append(number)
            continue
        new = introduced_modalities(stage)
        if not set(new) & in_data:
            # it would train on the previous stage's data again; an ablation that drops a modality the data has
            # keeps the stage, so that it trains as many steps as the run it is compared with
            print(f"Stage {number} adds {list(new)}, which {args.data_dir} has no features for: skipped.")
            skipped.append(number)
            continue
        previous = _previous_adapter(run_dir, number, args, skipped)
        stage_metrics[number] = run_stage(stage, args, training_args, data, features, run_dir, previous, users)
    if not stage_metrics:
        raise ValueError(f"No stage of {args.stage_numbers} had data for its modalities: check the features and "
                         "--drop_modalities.")
    last = max(stage_metrics)
    if state.is_main_process:
        model, tokenizer = build_model(args, features, training_args.seed, run_dir / f"stage{last}" / "adapter",
                                       users=users)
        collator = SpeederProcessor.from_model_config(model.get_base_model().config, tokenizer).with_items(
            features, stage_modalities(STAGES[last], features), users=users)
        test = evaluate_split(model, collator, data, "test", args, predictions_path(run_dir / "results.json"),
                              desc="test")
        results = {"stages": {str(k): v for k, v in stage_metrics.items()}, "test": test, "final_stage": last,
                   "config": args.to_dict(),
                   "finished_on": {"machine": machine_description(), "bf16": bool(training_args.bf16)}}
        write_json_atomically(run_dir / "results.json", results)
        (run_dir / "results.md").write_text(results_table(results))
        print(results_table(results))
    state.wait_for_everyone()
    return json.loads((run_dir / "results.json").read_text())


def _previous_adapter(run_dir: Path, number: int, args: SpeederArguments, skipped: list[int]) -> Path | None:
    """The adapter a stage starts from; for the first stage that has data in this run `--init_adapter`, else None
    (fresh weights)."""
    earlier = [n for n in STAGES if n < number and (run_dir / f"stage{n}" / STAGE_DONE).exists()]
    if earlier:
        return run_dir / f"stage{max(earlier)}" / "adapter"
    if args.init_adapter is not None:
        return Path(args.init_adapter)
    if number == 1 or args.ablation in STAGE_SKIPPING_ABLATIONS or set(range(1, number)) <= set(skipped):
        return None
    needed = max(n for n in range(1, number) if n not in skipped)
    raise ValueError(
        f"Stage {number} starts from stage {needed}'s weights, but {run_dir} has no finished stage {needed}: "
        f"run it first (--stages {needed},{number}), start fresh with --ablation wo_stage1 / wo_stages12, or from "
        "another run's adapter with --init_adapter RUN_DIR/stageN/adapter."
    )

