"""The one trainer of every baseline: every prefix of the train split, Adam, early stopping on valid HR@1."""

import copy
import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metrics.predictions import predictions_path, write_predictions
from modeling_speeder.file_utils import write_json_atomically

from .base import SequentialRecommender
from .bert4rec import BERT4Rec
from .data import build_train_windows, load_baseline_data
from .evaluator import evaluate_pools, predict_pools
from .gru4rec import GRU4Rec
from .pop import Pop
from .sasrec import SASRec

LOGGED = ("hr@1", "ndcg@5")  # valid metrics kept per epoch in the history
MODELS: dict[str, type[SequentialRecommender]] = {
    "pop": Pop, "sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec,
}


@dataclass
class BaselineTrainingArguments:
    """Optimisation settings (the paper's: Adam, lr 1e-3, batch 128); stop after `patience` epochs without a better
    valid HR@1 and keep the best epoch's weights."""

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    patience: int = 10
    eval_batch_size: int = 512
    device: str = "auto"
    show_progress: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"epochs, patience, batch_size and eval_batch_size must be >= 1, got {self.epochs}, {self.patience}, "
                f"{self.batch_size}, {self.eval_batch_size}."
            )
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class BaselineResult:
    """A trained baseline: the model (best valid epoch, eval mode), its item table and its metrics."""

    name: str
    model: SequentialRecommender
    item_embeddings: torch.Tensor  # float32, CPU, [num_items, d], item_index order
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    epochs_trained: int
    best_epoch: int
    wall_time_s: float
    output_path: Path
    history: list[dict[str, float]] = field(default_factory=list)


def valid_fields(name: str) -> list[str]:
    """Every override `train_baseline(name, ...)` accepts: the model's config fields and the training arguments."""
    model_fields = [f.name for f in dataclasses.fields(MODELS[name].config_class)]
    return sorted(model_fields + [f.name for f in dataclasses.fields(BaselineTrainingArguments)])


def train_baseline(name: str, data_dir: str | os.PathLike, seed: int = 42, output_dir: str | os.PathLike | None = None,
                   train_rows: Sequence[int] | None = None, **overrides: Any) -> BaselineResult:
    """Train baseline `name` on `DATA_DIR/sequences` (train split), select on valid, score the stored test pools.

    `train_rows`: the indices of the train split's rows to train on (default all), e.g. other users' rows only.

    `overrides` are fields of the model's config (e.g. `hidden_size`, `loss_type`) or of
    `BaselineTrainingArguments` (e.g. `epochs`, `patience`). Writes `<name>.json` and its predictions into
    `output_dir` (default `DATA_DIR/baselines`).
    Seeding forks torch's global RNG, so the caller's random state is left untouched.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown baseline {name!r}; valid names: {sorted(MODELS)}.")
    model_class = MODELS[name]
    config_fields = {f.name for f in dataclasses.fields(model_class.config_class)}
    training_fields = {f.name for f in dataclasses.fields(BaselineTrainingArguments)}
    unknown = sorted(set(overrides) - config_fields - training_fields)
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for {name!r}; valid fields: {valid_fields(name)}.")
    config = model_class.config_class(**{k: v for k, v in overrides.items() if k in config_fields})
    args = BaselineTrainingArguments(**{k: v for k, v in overrides.items() if k in training_fields})

    data_dir = Path(data_dir)
    splits, num_items = load_baseline_data(data_dir)
    if train_rows is not None:
        splits["train"] = splits["train"].select(train_rows)
    start = time.perf_counter()
    devices = [torch.device(args.device)] if torch.device(args.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = model_class(config, num_items).to(args.device)
        windows = build_train_windows(splits["train"], model.max_history_length + 1)
        history, best_epoch = _fit(model, windows, splits["valid"], args, seed, desc=name)
        valid_metrics = evaluate_pools(model, splits["valid"], args.eval_batch_size, args.device)
        test_metrics, test_predictions = predict_pools(model, splits, "test", args.eval_batch_size, args.device)
    wall_time = time.perf_counter() - start

    output_path = Path(output_dir or data_dir / "baselines") / f"{name}.json"
    write_predictions(predictions_path(output_path), test_predictions)
    report = {
        "model": name,
        "seed": seed,
        "num_items": num_items,
        "num_train_windows": len(windows),
        "num_train_targets": int((windows[:, 1:] >= 0).sum()),
        "config": dataclasses.asdict(config),
        "training_args": dataclasses.asdict(args),
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "stopped_early": len(history) < args.epochs,
        "wall_time_s": round(wall_time, 2),
        "valid_metrics": valid_metrics,
        "test_metrics": test_metrics,
        "history": history,
    }
    write_json_atomically(output_path, report)
    return BaselineResult(
        name=name,
        model=model,
        item_embeddings=model.item_embeddings().detach().float().cpu().clone(),
        valid_metrics=valid_metrics,
        test_metrics=test_metrics,
        epochs_trained=len(history),
        best_epoch=best_epoch,
        wall_time_s=wall_time,
        output_path=output_path,
        history=history,
    )


def _fit(model, windows, valid, args: BaselineTrainingArguments, seed: int, desc: str):
    """Epochs of shuffled mini-batches until `patience` epochs pass without a better valid HR@1; restores the best."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history, best_hr, best_epoch, best_state = [], -1.0, 0, None
    epochs = tqdm(range(1, args.epochs + 1), desc=desc, unit="epoch", disable=not args.show_progress)
    for epoch in epochs:
        model.train()
        losses = []
        for index in torch.randperm(len(windows), generator=generator).split(args.batch_size):
            sequence = windows[index]
            sequence = sequence[:, : int((sequence >= 0).sum(1).max())]  # drop all-padding columns
            loss = model.calculate_loss({"sequence": sequence.to(args.device)})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = evaluate_pools(model, valid, args.eval_batch_size, args.device)
        loss = sum(losses) / len(losses)
        history.append({"epoch": epoch, "loss": loss, **{f"valid_{k}": v for k, v in metrics.items() if k in LOGGED}})
        epochs.set_postfix(loss=f"{loss:.4f}", valid_hr1=f"{metrics['hr@1']:.4f}")
        if metrics["hr@1"] > best_hr:
            best_hr, best_epoch, best_state = metrics["hr@1"], epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= args.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch
