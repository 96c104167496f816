"""LLM baselines on the same stored pools: a trained LLaRA-style model and the untuned backbone, zero-shot.

* `llara`: every item as its title plus one SASRec-ID token (the ID feature through the same projector Speeder
  uses, no PPL, no PPT), the same backbone and the same LoRA budget as Speeder, trained with the same SFTTrainer
  setup on the same samples; it answers by generating the chosen title.
* `zero_shot`: the untuned backbone, items as titles only, answering by generating a title. Its ValidRatio shows
  the problem the paper's Table 2 shows for untuned LLMs.

Both are scored from generated answers exactly as the paper does (ValidRatio, HR@1, VHR@1), through the shared
metric module, and write `DATA_DIR/baselines/<name>.json` like the ID baselines.
"""

import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from metrics import compute_choice_metrics
from metrics.predictions import prediction_rows, predictions_path, write_predictions

from .llara import LlaraPromptBuilder
from .trainer import _write_json_atomically

IGNORE_INDEX = -100


class TitlePromptBuilder(LlaraPromptBuilder):
    """LLaRA's prompt with titles only (no embedding tokens): what an untuned LLM can read."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.item_modalities = ()


class LlaraCollator:
    """Batches LLaRA-style prompts: title tokens, one `<item>` per item filled with its ID feature, title answers."""

    def __init__(self, builder: LlaraPromptBuilder, titles: list[str], features=None, max_history: int = 10,
                 with_answer: bool = True, padding_side: str = "right"):
        self.builder, self.titles, self.features = builder, titles, features
        self.max_history, self.with_answer, self.padding_side = max_history, with_answer, padding_side
        self.pad_token_id = builder.tokenizer.pad_token_id

    def prompt(self, row: dict):
        history = list(row["history"])[-self.max_history:]
        items = history + list(row["candidates"])
        prompt = self.builder.recommendation([self.titles[i] for i in history],
                                             [self.titles[i] for i in row["candidates"]],
                                             answer=int(row["label"]) if self.with_answer else None)
        return prompt, [items[slot] for slot in prompt.item_slots]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts, items = zip(*(self.prompt(row) for row in rows))
        width = max(len(p.input_ids) for p in prompts)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, prompt in enumerate(prompts):
            n = len(prompt.input_ids)
            span = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            input_ids[i, span], attention_mask[i, span] = torch.tensor(prompt.input_ids), 1
            labels[i, span] = torch.tensor(prompt.labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.with_answer:
            batch["labels"] = labels
        if self.features is not None:
            batch.update(self.features.gather(torch.tensor([i for sample in items for i in sample]), ("id",)))
            # As in LLaRA, every item gets its SASRec table row, also one SASRec never trained (unseen in train).
            batch["modality_mask"][:, 2] = True
        return batch


@torch.no_grad()
def generated_choices(model, collator: LlaraCollator, rows, batch_size: int, desc: str) -> list[int]:
    """Greedy-generates each answer title and parses it to a candidate index (-1 when it names none)."""
    model.eval()
    device = next(model.parameters()).device
    scoring = copy.copy(collator)
    scoring.with_answer, scoring.padding_side = False, "left"
    choices = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = {k: v.to(device) for k, v in scoring(chunk).items()}
        longest = max(collator.builder.answer_length(collator.titles[c]) for row in chunk for c in row["candidates"])
        output = model.generate(**batch, max_new_tokens=longest, do_sample=False,
                                pad_token_id=collator.pad_token_id, eos_token_id=collator.builder.eos_token_id)
        for row, generated in zip(chunk, output[:, batch["input_ids"].shape[1]:].tolist()):
            choices.append(collator.builder.parse_answer(generated, [collator.titles[c] for c in row["candidates"]]))
    return choices


def _write(output_dir: Path, name: str, report: dict, test, choices: list[int]) -> Path:
    """Writes `<name>.json` and the test predictions beside it (answers only: no candidate scores)."""
    path = output_dir / f"{name}.json"
    write_predictions(predictions_path(path), prediction_rows(test, choices))
    _write_json_atomically(report, path)
    return path


def _split(data, name: str, max_samples: int | None):
    split = data[name]
    return split.select(range(min(len(split), max_samples))) if max_samples else split


def zero_shot(data_dir, backbone: str = "smollm2-135m-instruct", max_history: int = 10, batch_size: int = 8,
              max_eval_samples: int | None = None) -> dict:
    """The untuned backbone answering with a generated title; writes `baselines/zero_shot.json`."""
    from datasets_builder.build import load_built_dataset
    from modeling_speeder.backbones import resolve_backbone

    data_dir, started = Path(data_dir), time.time()
    data, items, _ = load_built_dataset(data_dir)
    path = resolve_backbone(backbone)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<item>"]})  # never used: titles only
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    collator = LlaraCollator(TitlePromptBuilder(tokenizer), items["title"], None, max_history, with_answer=False)
    test = _split(data, "test", max_eval_samples)
    choices = generated_choices(model, collator, test, batch_size, "zero-shot test")
    metrics = compute_choice_metrics(choices, [int(row["label"]) for row in test])
    report = {"model": "zero_shot", "backbone": backbone, "test_metrics": metrics,
              "wall_time_s": round(time.time() - started, 1)}
    _write(data_dir / "baselines", "zero_shot", report, test, choices)
    return report


def train_llara(data_dir, backbone: str = "smollm2-135m-instruct", max_history: int = 10, seed: int = 42,
                max_train_samples: int | None = None, max_eval_samples: int | None = None, learning_rate: float = 1e-3,
                batch_size: int = 8, lora_r: int = 8, lora_alpha: int = 16, lora_target_modules: str = "q_proj,v_proj",
                prefix_min_history: int = 0, num_train_epochs: float = 1.0, output_dir: str | None = None,
                results_dir: str | None = None) -> dict:
    """Trains the LLaRA-style baseline with Speeder's own SFTTrainer setup; writes `llara.json` and its predictions
    into `results_dir` (default `DATA_DIR/baselines`); checkpoints and logs go to `output_dir`."""
    from datasets_builder.build import load_built_dataset, train_subset
    from trainer.arguments import SpeederArguments, SpeederSFTConfig
    from trainer.pipeline import SpeederSFTTrainer, build_model, load_features, with_history_prefixes
    from trainer.stages import STAGES, apply_stage

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
    collator = LlaraCollator(LlaraPromptBuilder(tokenizer), items["title"], features, max_history)
    train = train_subset(data["train"], max_train_samples, seed)  # the same samples Speeder trains on
    train = with_history_prefixes(train, prefix_min_history, seed)  # the Trainer shuffles them
    output_dir = output_dir or str(data_dir / "baselines" / "llara_run")
    training_args = SpeederSFTConfig(output_dir=output_dir, per_device_train_batch_size=batch_size,
                                     num_train_epochs=num_train_epochs, learning_rate=learning_rate, seed=seed,
                                     save_strategy="no",
                                     report_to="none", logging_steps=4)
    trainer = SpeederSFTTrainer(model=model, args=training_args, train_dataset=train, data_collator=collator,
                                processing_class=tokenizer, speeder_args=args)
    trainer.train()
    test = _split(data, "test", max_eval_samples)
    choices = generated_choices(model, collator, test, batch_size, "LLaRA-style test")
    metrics = compute_choice_metrics(choices, [int(row["label"]) for row in test])
    report = {"model": "llara", "backbone": backbone, "train_samples": len(train), "epochs": num_train_epochs,
              "prefix_min_history": prefix_min_history, "test_metrics": metrics,
              "lora": {"r": lora_r, "alpha": lora_alpha, "target_modules": lora_target_modules},
              "wall_time_s": round(time.time() - started, 1)}
    _write(Path(results_dir or data_dir / "baselines"), "llara", report, test, choices)
    return report
