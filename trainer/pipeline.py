"""The MPO curriculum: one SFTTrainer run per stage, each starting from the previous stage's saved adapter."""

import copy
import hashlib
import json
import math
import os
import shlex
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, List, Value, concatenate_datasets
from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from torch.optim.lr_scheduler import LambdaLR
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer

from datasets_builder.build import DEFAULT_ENCODERS, load_built_dataset, train_subset
from datasets_builder.features import (feature_data_fingerprint, files_revision, load_item_features,
                                       read_feature_manifest)
from metrics.predictions import predictions_path, write_predictions
from modeling_speeder import MODALITIES
from modeling_speeder.backbones import build_speeder_model

from .arguments import STAGE_SKIPPING_ABLATIONS, SpeederArguments, SpeederSFTConfig
from .callbacks import NonFiniteGradientCallback, NonFiniteTrainingError, non_finite_message
from .collator import IGNORE_INDEX, ItemFeatureTable, SpeederCollator
from .evaluation import evaluate_ppt, evaluate_recommendation
from .reporting import plot_training_curve, results_table, write_log
from .stages import (STAGES, Stage, apply_stage, check_frozen_unchanged, frozen_fingerprints,
                     introduced_modalities, parse_stage_epochs)

MODULES_TO_SAVE = ["item_encoder", "history_position_embeddings"]
RUN_CONFIG = "run_config.json"
ALIGN_MAX_ITEMS = 8192  # items whose embeddings set the alignment statistics (a seeded sample of larger catalogues)
STAGE_DONE = "stage_metrics.json"


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from 1/100 of the peak, then cosine decay to 0 (paper §3.1)."""
    if step < warmup_steps:
        return 0.01 + 0.99 * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class SpeederSFTTrainer(SFTTrainer):
    """SFTTrainer with the paper's LR schedule and Speeder metrics (HR@1 and PPT accuracy) at evaluation; a training
    step with a non-finite loss raises `NonFiniteTrainingError` naming `stage` (the MPO stage, for the message) and
    the step."""

    def __init__(self, *args, eval_collator=None, eval_sets=None, speeder_args=None, stage: int | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator, self.eval_sets, self.speeder_args = eval_collator, eval_sets or {}, speeder_args
        self.stage = stage

    def create_optimizer(self, model=None):
        """The configured optimizer (`--optim`) with two peak learning rates: `learning_rate` for LoRA and the modality
        gates, `item_encoder_learning_rate` for the rest of the item encoder and the PPL table; weight decay as the
        Trainer applies it."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            item_lr = self.speeder_args.item_encoder_learning_rate
            item_lr = self.args.learning_rate / 10 if item_lr is None else item_lr
            groups: dict[tuple[float, float], list] = {}
            for name, parameter in opt_model.named_parameters():
                if parameter.requires_grad:
                    # a gate starts shut and must open within its stage: it learns at LoRA's rate
                    lr = self.args.learning_rate if "lora_" in name or ".gates." in name else item_lr
                    weight_decay = self.args.weight_decay if name in decay else 0.0
                    groups.setdefault((lr, weight_decay), []).append(parameter)
            # LoRA's groups first: the Trainer logs the first group's learning rate
            ordered = sorted(groups.items(), key=lambda item: item[0][0] != self.args.learning_rate)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(
                [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in ordered], **optimizer_kwargs
            )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Eq. 19: next-token cross-entropy on the labelled (answer) tokens, with TRL's entropy, token accuracy and
        token-count metrics. Only the positions that predict a label go through the LM head: TRL's fused head scores
        every position of the prompt where Triton is missing (a CPU), about 30% of a CPU step for one answer token."""
        labels = inputs["labels"]
        rows, positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)  # position p predicts token p + 1
        keep, column = torch.unique(positions, return_inverse=True)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**model_inputs, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits[rows, column].float()
        targets = labels[:, 1:][rows, positions]
        num_tokens = len(targets) if num_items_in_batch is None else num_items_in_batch
        loss = F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL: DDP averages the gradients across ranks

        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            log_probs = logits.log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            # the last entry counts the ranks whose loss is not finite: every rank stops at the same step
            gathered = self.accelerator.gather_for_metrics(torch.stack([
                entropy.sum(), (logits.argmax(-1) == targets).sum().to(entropy.dtype),
                torch.tensor(float(len(targets)), device=entropy.device),
                (~torch.isfinite(loss.detach())).to(entropy.dtype)]).unsqueeze(0)).sum(0)
        if mode == "train" and gathered[3] > 0:
            raise NonFiniteTrainingError(
                non_finite_message(self.stage, self.state.global_step + 1, f"the training loss ({loss.item()})")
            )
        if gathered[2] > 0:
            self._metrics[mode]["entropy"].append((gathered[0] / gathered[2]).item())
            self._metrics[mode]["mean_token_accuracy"].append((gathered[1] / gathered[2]).item())
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            warmup = self.args.get_warmup_steps(num_training_steps)
            schedule = partial(warmup_cosine, warmup_steps=warmup, total_steps=num_training_steps)
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, schedule)
        return self.lr_scheduler

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = {}
        if "valid" in self.eval_sets:
            rec, _ = evaluate_recommendation(
                self.model, self.eval_collator, self.eval_sets["valid"], self.speeder_args.eval_batch_size,
                self.speeder_args.max_eval_samples, generate=False, desc="valid",
            )
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in rec.items() if k != "num_samples"})
        if "ppt_valid" in self.eval_sets:
            ppt = evaluate_ppt(self.model, self.eval_collator, self.eval_sets["ppt_valid"],
                               self.speeder_args.eval_batch_size, self.speeder_args.max_eval_samples)
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in ppt.items()})
        self.log(metrics)
        self.model.train()
        return metrics


def write_json_atomic(path: Path, payload) -> None:
    """Writes JSON to a temporary file beside `path`, then renames it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
    os.replace(tmp, path)


def data_fingerprint(data_dir: str, modalities) -> str:
    """A digest of the sequence and feature files a run reads: a rerun on rebuilt data is not the same run."""
    root = Path(data_dir)
    files = sorted((root / "sequences").rglob("data-*.arrow"))  # not the cache-*.arrow files `map` adds
    files += [root / "features" / f"{m}.safetensors" for m in modalities]
    revisions = [f"{path.relative_to(root).as_posix()}:{files_revision(path)}" for path in files if path.is_file()]
    return hashlib.sha256("\n".join(revisions).encode()).hexdigest()[:16]


def run_config(args: SpeederArguments, training_args: SpeederSFTConfig) -> dict:
    """What a run folder records in `run_config.json`: the arguments, the training settings that change the
    weights, and the `data_fingerprint` of what the run reads."""
    modalities = [m for m in MODALITIES if m not in args.dropped_modalities]
    return args.to_dict() | {"seed": training_args.seed, "learning_rate": training_args.learning_rate,
                             "num_train_epochs": training_args.num_train_epochs, "max_steps": training_args.max_steps,
                             "data": data_fingerprint(args.data_dir, modalities)}


def check_run_config(run_dir: Path, config: dict) -> None:
    """A rerun/resume of a recorded run with a different config fails naming what differs; nothing is written.

    Keys that an older record lacks are not compared, so runs recorded before a key was added still resume."""
    path = run_dir / RUN_CONFIG
    if path.exists():
        previous = json.loads(path.read_text())
        differs = {k: (previous[k], v) for k, v in config.items() if k in previous and previous[k] != v
                   and k != "resume"}
        if differs:
            lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differs.items())
            raise ValueError(
                f"{run_dir} holds a run with another config ({lines}). Use a new --output_dir, or the same values."
            )


def record_run_config(run_dir: Path, config: dict) -> None:
    """Records the run's config, once training really starts: a start that fails on its inputs (a wrong --data_dir,
    missing features, a bad LoRA target) leaves no record, so the corrected rerun is not refused."""
    check_run_config(run_dir, config)
    if not (run_dir / RUN_CONFIG).exists():
        write_json_atomic(run_dir / RUN_CONFIG, config)


def training_rows(sequences, args: SpeederArguments, seed: int, max_samples: int | None,
                  shuffle_seed: int | None = None) -> Dataset:
    """Recommendation rows (with their history prefixes when `prefix_min_history` is set) plus `ppt_per_sequence`
    PPT rows per training sequence, shuffled together with `shuffle_seed` (default `seed`). `seed` picks the
    training subset, the same one the LLaRA-style baseline trains on."""
    rec = train_subset(sequences["train"], max_samples, seed)
    num_sequences = len(rec)
    features = Features({"history": List(Value("int64")), "candidates": List(Value("int64")), "label": Value("int64"),
                         "ppt_positions": List(Value("int64")), "ppt_label": Value("string")})
    rec = with_history_prefixes(rec, args.prefix_min_history, seed)
    parts = [rec.map(lambda _: {"ppt_positions": [], "ppt_label": ""}, features=features)]
    if args.ppt_per_sequence > 0 and "ppt_train" in sequences:
        ppt = sequences["ppt_train"]
        count = min(len(ppt), int(round(args.ppt_per_sequence * num_sequences)))
        ppt = ppt.shuffle(seed=seed).select(range(count)).select_columns(["history", "ppt_positions", "ppt_label"])
        parts.append(ppt.map(lambda _: {"candidates": [], "label": -1}, features=features))
    return concatenate_datasets(parts).shuffle(seed=seed if shuffle_seed is None else shuffle_seed)


def with_history_prefixes(rows: Dataset, min_history: int, seed: int) -> Dataset:
    """`rows` (history, candidates, label) followed by their `history_prefix_rows`; `min_history` 0 adds none."""
    rows = rows.select_columns(["history", "candidates", "label"])
    return concatenate_datasets([rows, history_prefix_rows(rows, min_history, seed)]) if min_history else rows


def history_prefix_rows(rows: Dataset, min_history: int, seed: int) -> Dataset:
    """More recommendation rows from the stored ones: history item k becomes the target of the k items before it,
    for every k >= `min_history`, as SASRec trains on every position of the same windows. The candidates are the
    row's stored negatives (items its user never interacted with, so negatives for any of the user's targets) plus
    that target, at a seeded random slot."""

    def expand(batch, indices):
        out = {"history": [], "candidates": [], "label": []}
        for row, history, candidates, label in zip(indices, batch["history"], batch["candidates"], batch["label"]):
            negatives = [c for i, c in enumerate(candidates) if i != label]
            rng = np.random.default_rng([seed, row])
            for k in range(min_history, len(history)):
                slot = int(rng.integers(len(candidates)))
                out["history"].append(history[:k])
                out["candidates"].append(negatives[:slot] + [history[k]] + negatives[slot:])
                out["label"].append(slot)
        return out

    return rows.map(expand, batched=True, with_indices=True, remove_columns=rows.column_names, features=rows.features)


def load_features(data_dir: str, args: SpeederArguments) -> ItemFeatureTable:
    """The cached features of every modality that has a feature file with at least one present item, checked
    against the built data (`check_features_match_data`)."""
    wanted = [m for m in MODALITIES if m not in args.dropped_modalities]
    on_disk = [m for m in wanted if (Path(data_dir) / "features" / f"{m}.safetensors").is_file()]
    if not on_disk:
        raise FileNotFoundError(f"No item features for {wanted} in {data_dir}/features: run "
                                "`python -m datasets_builder features`.")
    loaded = load_item_features(data_dir, modalities=tuple(on_disk))
    check_features_match_data(data_dir, loaded)
    loaded = {m: (f, p.bool()) for m, (f, p) in loaded.items() if p.any()}
    return ItemFeatureTable({m: f for m, (f, _) in loaded.items()}, {m: p for m, (_, p) in loaded.items()})


def check_features_match_data(data_dir: str, loaded: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Raises ValueError naming the feature file and the command that recomputes it when a file's rows are not the
    built items: another row count than `DATA_DIR/items`, or another data fingerprint than the build's (the data
    was rebuilt after the features). `loaded`: modality -> (features `(num_items, d)`, present `(num_items,)`) as
    `load_item_features` returns them (it refuses non-finite values). Files without a manifest (written by hand)
    only have their rows checked."""
    _, items, stats = load_built_dataset(data_dir)
    files = {m: Path(data_dir) / "features" / f"{m}.safetensors" for m in MODALITIES}
    manifests = {m: read_feature_manifest(path) or {} for m, path in files.items() if path.is_file()}
    # the command that recomputes every file there is with its own encoder (and no file where there is none)
    encoders = {m: manifests[m].get("key", {}).get("encoder", DEFAULT_ENCODERS[m]) if m in manifests else "none"
                for m in MODALITIES}
    command = (f"`python -m datasets_builder features {shlex.quote(str(data_dir))} "
               + " ".join(f"--{m}-encoder {shlex.quote(encoder)}" for m, encoder in encoders.items()) + "`")
    for modality, (features, present) in loaded.items():
        path = files[modality]
        if features.shape[0] != len(items) or present.shape[0] != len(items):
            raise ValueError(
                f"{path} has {features.shape[0]} rows, but {Path(data_dir) / 'items'} has {len(items)} items: the "
                f"features belong to another build of the data. Recompute them: {command}."
            )
        recorded = manifests[modality].get("key", {}).get("data_fingerprint")
        expected = feature_data_fingerprint(modality, items, stats) if recorded is not None else None
        if expected is not None and recorded != expected:
            raise ValueError(
                f"{path} was computed from other data than {data_dir} holds now (data fingerprint {recorded[:12]}, "
                f"the build's {expected[:12]}): the data was rebuilt after the features. Recompute them: {command}."
            )


def modalities_in_data(data_dir: str) -> set[str]:
    """The modalities DATA_DIR has a feature file for, with at least one present item (ablations aside)."""
    found = set()
    for modality in MODALITIES:
        path = Path(data_dir) / "features" / f"{modality}.safetensors"
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if f.get_tensor("present").any():
                    found.add(modality)
    return found


def build_model(args: SpeederArguments, features: ItemFeatureTable, seed: int, previous_adapter: Path | None,
                align_modalities: tuple[str, ...] = ()):
    """The Speeder model (seeded, so every stage rebuilds identical base weights) wrapped with LoRA.

    A fresh model (no `previous_adapter`) with `align_modalities` has its item encoder's output aligned to the
    backbone's token embeddings on the items' features of those modalities (`--align_item_embeddings`)."""
    set_seed(seed)
    sizes = {f"{m}_feature_size": features.features[m].shape[1] for m in features.features}
    model, tokenizer = build_speeder_model(
        args.backbone,
        attn_implementation=args.attn_implementation,
        modalities=list(features.features),
        max_history_length=args.max_history,
        use_history_positions=args.use_history_positions,
        history_indices=args.history_indices,
        gate_type=args.gate_type,
        gate_bias_init=args.gate_bias_init,
        fusion_hidden_size=args.fusion_hidden_size,
        fusion_num_attention_heads=args.fusion_num_attention_heads,
        fusion_intermediate_size=args.fusion_intermediate_size,
        num_modality_expert_layers=args.num_modality_expert_layers,
        num_multimodal_expert_layers=args.num_multimodal_expert_layers,
        **sizes,
    )
    known = {name.split(".")[-1] for name, _ in model.model.language_model.named_modules()}
    unknown = [m for m in args.target_modules if m not in known]
    if unknown:
        linear = sorted({n.split(".")[-1] for n, m in model.model.language_model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora_target_modules {unknown} are not in the backbone; its linear layers are {linear}.")
    if previous_adapter is not None:
        return PeftModel.from_pretrained(model, previous_adapter, is_trainable=True), tokenizer
    if args.align_item_embeddings and align_modalities:
        # before PEFT wraps it, so that the trainable copy of the encoder starts aligned
        usable = torch.stack([features.present[m] for m in align_modalities if m in features.present]).any(0)
        items = usable.nonzero().flatten()
        items = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:ALIGN_MAX_ITEMS]]
        statistics = model.model.align_item_embeddings(**features.gather(items, align_modalities))
        print(f"Item embeddings aligned to the backbone's token embeddings on {len(items)} items: "
              f"scale {statistics['scale']:.3g}, token mean norm {statistics['token_mean_norm']:.3g}")
    modules_to_save = [m for m in MODULES_TO_SAVE if getattr(model.model, m, None) is not None]
    lora = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.target_modules, modules_to_save=modules_to_save, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def gate_openness(model, features: ItemFeatureTable, modalities: tuple[str, ...], seed: int) -> dict[str, float]:
    """Mean gate value per gated modality of the stage (0 = shut, 1 = open), over a seeded sample of the items."""
    encoder = model.get_base_model().model.item_encoder
    items = torch.randperm(features.num_items, generator=torch.Generator().manual_seed(seed))[:ALIGN_MAX_ITEMS]
    inputs = features.gather(items, modalities)
    parameter = next(encoder.parameters())
    features_in = {m: inputs[f"{m}_features"].to(parameter.device) for m in modalities if f"{m}_features" in inputs}
    return encoder.gate_openness(features_in, inputs["modality_mask"].to(parameter.device))


def evaluate_split(model, collator: SpeederCollator, data, split: str, args: SpeederArguments,
                   predictions_file: Path, desc: str) -> dict:
    """Metrics on a split's stored pools (the paper's one per sequence; the `<split>_pools` extra pools of the same
    sequences under "extra_pools", when the data has them); writes every pool's prediction to `predictions_file`."""
    metrics, records = evaluate_recommendation(model, collator, data[split], args.eval_batch_size,
                                               args.max_eval_samples, generate=args.eval_generate, desc=desc)
    extra = data.get(f"{split}_pools")
    if extra is not None and len(extra):
        sequences = {record["sequence_id"] for record in records}
        extra = extra.filter(lambda batch: [s in sequences for s in batch["sequence_id"]], batched=True)
        extra_metrics, extra_records = evaluate_recommendation(model, collator, extra, args.eval_batch_size,
                                                               generate=args.eval_generate, desc=f"{desc}, extra pools")
        metrics["extra_pools"] = extra_metrics
        records += extra_records
    write_predictions(predictions_file, records)
    return metrics


def stage_modalities(stage: Stage, features: ItemFeatureTable) -> tuple[str, ...]:
    return tuple(m for m in stage.modalities if m in features.features)


def run_stage(stage: Stage, args: SpeederArguments, training_args: SpeederSFTConfig, data, features, run_dir: Path,
              previous_adapter: Path | None) -> dict:
    stage_dir = run_dir / f"stage{stage.number}"
    modalities = stage_modalities(stage, features)
    model, tokenizer = build_model(args, features, training_args.seed, previous_adapter, align_modalities=modalities)
    trainable = apply_stage(model, stage)
    collator = SpeederCollator(model.get_base_model().prompt_builder(tokenizer), features, modalities, args.max_history)
    # each stage draws its own order (and, with a fractional epoch, its own part) of the training rows
    rows = training_rows(data, args, training_args.seed, args.max_train_samples,
                         shuffle_seed=training_args.seed + stage.number)
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
        write_json_atomic(stage_dir / STAGE_DONE, metrics)  # written last: marks the stage finished
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
        stage_metrics[number] = run_stage(stage, args, training_args, data, features, run_dir, previous)
    if not stage_metrics:
        raise ValueError(f"No stage of {args.stage_numbers} had data for its modalities: check the features and "
                         "--drop_modalities.")
    last = max(stage_metrics)
    if state.is_main_process:
        model, tokenizer = build_model(args, features, training_args.seed, run_dir / f"stage{last}" / "adapter")
        collator = SpeederCollator(model.get_base_model().prompt_builder(tokenizer), features,
                                   stage_modalities(STAGES[last], features), args.max_history)
        test = evaluate_split(model, collator, data, "test", args, predictions_path(run_dir / "results.json"),
                              desc="test")
        results = {"stages": {str(k): v for k, v in stage_metrics.items()}, "test": test, "final_stage": last,
                   "config": args.to_dict()}
        write_json_atomic(run_dir / "results.json", results)
        (run_dir / "results.md").write_text(results_table(results))
        print(results_table(results))
    state.wait_for_everyone()
    return json.loads((run_dir / "results.json").read_text())


def _previous_adapter(run_dir: Path, number: int, args: SpeederArguments, skipped: list[int]) -> Path | None:
    """The adapter a stage starts from; None (fresh weights) for the first stage that has data in this run."""
    earlier = [n for n in STAGES if n < number and (run_dir / f"stage{n}" / STAGE_DONE).exists()]
    if earlier:
        return run_dir / f"stage{max(earlier)}" / "adapter"
    if number == 1 or args.ablation in STAGE_SKIPPING_ABLATIONS or set(range(1, number)) <= set(skipped):
        return None
    needed = max(n for n in range(1, number) if n not in skipped)
    raise ValueError(
        f"Stage {number} starts from stage {needed}'s weights, but {run_dir} has no finished stage {needed}: "
        f"run it first (--stages {needed},{number}), or start fresh with --ablation wo_stage1 / wo_stages12."
    )
