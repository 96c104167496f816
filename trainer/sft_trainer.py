"""`SpeederSFTTrainer`: TRL's SFTTrainer with the paper's LR schedule, two learning rates and Speeder's metrics."""

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from trl import SFTTrainer

from modeling_speeder import IGNORE_INDEX


from .callbacks import NonFiniteTrainingError, non_finite_message
from .evaluation import evaluate_ppt, evaluate_recommendation


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

