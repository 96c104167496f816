"""Trainer callbacks: a training step whose numbers are not finite stops the run, naming the stage and the step."""

import torch
from transformers import TrainerCallback


class NonFiniteTrainingError(ValueError):
    """A training step's loss or gradients are NaN or infinite: what follows would train on garbage."""


def non_finite_message(stage: int | None, step: int, what: str) -> str:
    """The error for `what` (e.g. "the training loss nan") going non-finite at optimizer step `step` (1-based)."""
    where = f"Stage {stage}, step {step}" if stage is not None else f"Step {step}"
    return (
        f"{where}: {what} is not finite (NaN or inf), so training stopped. Check the item features for NaN or inf "
        "values (recompute them with `python -m datasets_builder features DATA_DIR`), or lower --learning_rate "
        "(or clip the gradients with --max_grad_norm 1.0)."
    )


class NonFiniteGradientCallback(TrainerCallback):
    """Raises `NonFiniteTrainingError` before the optimizer step when a trainable parameter's gradient holds NaN or
    inf. The loss is checked where it is computed (`SpeederSFTTrainer.compute_loss`); with `--max_grad_norm 0`
    (no clipping) nothing else would stop non-finite gradients from reaching the weights.

    Under fp16 mixed precision the gradient scaler skips steps with infinite gradients on purpose: not checked."""

    def __init__(self, stage: int | None = None):
        self.stage = stage

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None or args.fp16:
            return
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        if not grads:
            return
        finite = torch.stack([torch.isfinite(grad).all() for grad in grads.values()])
        if not finite.all():  # one device sync per step
            names = [name for name, ok in zip(grads, finite.tolist()) if not ok]
            more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
            raise NonFiniteTrainingError(
                non_finite_message(self.stage, state.global_step + 1, f"the gradient of {names[:5]}{more}")
            )
