"""LLM baselines on the same stored pools: a trained LLaRA-style model and the untuned backbone, zero-shot.

* `llara`: every item as its title plus one SASRec-ID token (the ID feature through the same projector Speeder
  uses, no PPL, no PPT), the same backbone and the same LoRA budget as Speeder, trained with the same SFTTrainer
  setup on the same samples; it answers by generating the chosen title.
* `zero_shot`: the untuned backbone, items as titles only, answering by generating a title. Its ValidRatio shows
  the problem the paper's Table 2 shows for untuned LLMs.

Both are scored from generated answers exactly as the paper does (ValidRatio, HR@1, VHR@1), through the shared
metric module, and write `DATA_DIR/baselines/<name>.json` like the ID baselines.

    python -m trainer.llm_baselines DATA_DIR --models llara,zero_shot --backbone smollm2-135m-instruct
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint

from datasets_builder.build import load_built_dataset, train_subset
from metrics import compute_choice_metrics
from metrics.predictions import prediction_rows, predictions_path, write_predictions
from modeling_speeder import ITEM_TOKEN, SpeederProcessor
from modeling_speeder.backbones import resolve_backbone
from modeling_speeder.file_utils import write_json_atomically

from .arguments import SpeederArguments, SpeederSFTConfig
from .training_data import load_features, with_history_prefixes
from .model_building import build_model
from .sft_trainer import SpeederSFTTrainer
from .stages import STAGES, apply_stage

@torch.no_grad()
def generated_choices(model, processor: SpeederProcessor, rows, batch_size: int, desc: str) -> list[int]:
    """Greedy-generates each answer title and parses it to a candidate index (-1 when it names none)."""
    model.eval()
    device = next(model.parameters()).device
    builder, titles = processor.prompt_builder, processor.titles
    choices = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = processor(chunk, with_answer=False, padding_side="left").to(device)
        longest = max(builder.answer_length(titles[c]) for row in chunk for c in row["candidates"])
        output = model.generate(**batch, max_new_tokens=longest, do_sample=False,
                                pad_token_id=processor.pad_token_id, eos_token_id=builder.eos_token_id)
        for row, generated in zip(chunk, output[:, batch["input_ids"].shape[1]:].tolist()):
            choices.append(builder.parse_answer(generated, [titles[c] for c in row["candidates"]]))
    return choices


def _write(output_dir: Path, name: str, report: dict, test, choices: list[int]) -> Path:
    """Writes `<name>.json` and the test predictions beside it (answers only: no candidate scores)."""
    path = output_dir / f"{name}.json"
    write_predictions(predictions_path(path), prediction_rows(test, choices))
    write_json_atomically(path, report)
    return path


def _split(data, name: str, max_samples: int | None):
    split = data[name]
    return split.select(range(min(len(split), max_samples))) if max_samples else split


def zero_shot(data_dir, backbone: str = "smollm2-135m-instruct", max_history: int = 10, batch_size: int = 8,
              max_eval_samples: int | None = None) -> dict:
    """The untuned backbone answering with a generated title; writes `baselines/zero_shot.json`."""
    data_dir, started = Path(data_dir), time.time()
    data, items, _ = load_built_dataset(data_dir)
    path = resolve_backbone(backbone)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]})  # never used: titles only
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    processor = SpeederProcessor(tokenizer, max_history_length=max_history, prompt_style="titles")
    test = _split(data, "test", max_eval_samples)
    choices = generated_choices(model, processor.with_items(None, titles=items["title"]), test, batch_size,
                                "zero-shot test")
    metrics = compute_choice_metrics(choices, [int(row["label"]) for row in test])
    report = {"model": "zero_shot", "backbone": backbone, "test_metrics": metrics,
              "wall_time_s": round(time.time() - started, 1)}
    _write(data_dir / "baselines", "zero_shot", report, test, choices)
    return report


def train_llara(data_dir, backbone: str = "smollm2-135m-instruct", max_history: int = 10, seed: int = 42,
                max_train_samples: int | None = None, max_eval_samples: int | None = None, learning_rate: float = 1e-3,
                batch_size: int = 8, lora_r: int = 8, lora_alpha: int = 16, lora_target_modules: str = "q_proj,v_proj",
                prefix_min_history: int = 0, num_train_epochs: float = 1.0, output_dir: str | None = None,
                results_dir: str | None = None, save_steps: int = 100) -> dict:
    """Trains the LLaRA-style baseline with Speeder's own SFTTrainer setup; writes `llara.json` and its predictions
    into `results_dir` (default `DATA_DIR/baselines`); a checkpoint every `save_steps` steps goes to `output_dir`, and
    a run interrupted there goes on from its last one."""
    data_dir, started = Path(data_dir), time.time()
    args = SpeederArguments(data_dir=str(data_dir), backbone=backbone, max_history=max_history,
                            drop_modalities="text,vision", use_history_positions=False, gate_type="none",
                            ppt_per_sequence=0.0, lora_r=lora_r, lora_alpha=lora_alpha,
                            lora_target_modules=lora_target_modules).resolved()
    data, items, _ = load_built_dataset(data_dir)
    features = load_features(str(data_dir), args)
    if "id" not in features.features:
        raise FileNotFoundError(f"{data_dir}/features/id.safetensors is missing: the LLaRA-style baseline needs SASRec "
                                "ID features (`python -m datasets_builder features DATA_DIR --id-encoder sasrec`).")
    # the ID projector starts aligned to the token embeddings and trains at 1/10 of LoRA's rate, as Speeder's encoder
    model, tokenizer = build_model(args, features, seed, None, align_modalities=("id",))
    apply_stage(model, STAGES[3])  # LoRA and the whole ID projector train
    # As in LLaRA, every item gets its SASRec table row, also one SASRec never trained (unseen in train).
    processor = SpeederProcessor(tokenizer, max_history_length=max_history, prompt_style="llara")
    collator = processor.with_items(features, ("id",), titles=items["title"])
    train = train_subset(data["train"], max_train_samples, seed)  # the same samples Speeder trains on
    train = with_history_prefixes(train, prefix_min_history, seed)  # the Trainer shuffles them
    output_dir = output_dir or str(data_dir / "baselines" / "llara_run")
    training_args = SpeederSFTConfig(output_dir=output_dir, per_device_train_batch_size=batch_size,
                                     num_train_epochs=num_train_epochs, learning_rate=learning_rate, seed=seed,
                                     save_strategy="steps", save_steps=save_steps, save_total_limit=1,
                                     report_to="none", logging_steps=4)
    trainer = SpeederSFTTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator,
                                processing_class=tokenizer, speeder_args=args)
    trainer.train(resume_from_checkpoint=get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None)
    test = _split(data, "test", max_eval_samples)
    choices = generated_choices(model, collator, test, batch_size, "LLaRA-style test")
    metrics = compute_choice_metrics(choices, [int(row["label"]) for row in test])
    report = {"model": "llara", "backbone": backbone, "train_samples": len(train), "epochs": num_train_epochs,
              "prefix_min_history": prefix_min_history, "test_metrics": metrics,
              "lora": {"r": lora_r, "alpha": lora_alpha, "target_modules": lora_target_modules},
              "wall_time_s": round(time.time() - started, 1)}
    _write(Path(results_dir or data_dir / "baselines"), "llara", report, test, choices)
    return report


LLM_BASELINES = ("llara", "zero_shot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.llm_baselines", description=__doc__)
    parser.add_argument("data_dir", help="output folder of `python -m datasets_builder` (sequences/, items/, ...)")
    parser.add_argument("--models", default=",".join(LLM_BASELINES),
                        help=f"comma-separated, from {list(LLM_BASELINES)}")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="Speeder's trainer config: its backbone and max_history are the defaults of both flags")
    parser.add_argument("--backbone", default=None, help="named backbone, folder or Hub id (default: --config's, "
                                                         "else smollm2-135m-instruct)")
    parser.add_argument("--max-history", type=int, default=None,
                        help="history items in the prompt (default: --config's, else 10)")
    parser.add_argument("--max-train-samples", type=int, default=None, help="llara: training sequences (default all)")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="test samples scored (default all)")
    parser.add_argument("--prefix-min-history", type=int, default=0,
                        help="llara: also train on history prefixes, as Speeder's --prefix_min_history (0: off)")
    parser.add_argument("--llm-epochs", type=float, default=1.0,
                        help="llara: epochs over its training rows (default 1)")
    args = parser.parse_args(argv)
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    args.backbone = args.backbone or config.get("backbone", "smollm2-135m-instruct")
    args.max_history = args.max_history or config.get("max_history", 10)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in LLM_BASELINES]
    if unknown or not names:
        parser.error(f"unknown model(s) {unknown}; valid names: {list(LLM_BASELINES)} "
                     "(the ID baselines: python -m baselines)")
    common = dict(backbone=args.backbone, max_history=args.max_history, max_eval_samples=args.max_eval_samples)
    for name in names:
        if name == "zero_shot":
            report = zero_shot(args.data_dir, **common)
        else:
            report = train_llara(args.data_dir, seed=args.seed, max_train_samples=args.max_train_samples,
                                 prefix_min_history=args.prefix_min_history, num_train_epochs=args.llm_epochs, **common)
        metrics = report["test_metrics"]
        print(f"{name}: test ValidRatio {metrics['valid_ratio']:.4f}, HR@1 {metrics['hr@1']:.4f}, "
              f"VHR@1 {metrics['vhr@1']:.4f} ({report['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
