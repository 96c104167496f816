"""`python -m baselines DATA_DIR --models pop,sasrec,gru4rec,bert4rec`: train each ID baseline, print test results.

The LLM baselines (`llara`, `zero_shot`) run with `python -m trainer.llm_baselines DATA_DIR --models llara,zero_shot`."""

import argparse
import ast
import sys

from .base import BaselineConfig
from .data import load_baseline_data
from .trainer import MODELS, BaselineTrainingArguments, train_baseline, valid_fields

# flag -> field of BaselineTrainingArguments or of every model's config, where its default lives
COMMON_FLAGS = {
    "epochs": BaselineTrainingArguments,
    "patience": BaselineTrainingArguments,
    "batch_size": BaselineTrainingArguments,
    "learning_rate": BaselineTrainingArguments,
    "device": BaselineTrainingArguments,
    "hidden_size": BaselineConfig,
    "max_seq_length": BaselineConfig,
    "dropout": BaselineConfig,
}


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}.")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


LLM_MODELS = ("llara", "zero_shot")  # moved to `python -m trainer.llm_baselines`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines", description=__doc__)
    parser.add_argument("data_dir", help="output folder of `python -m datasets_builder` (sequences/, items/)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--seed", type=int, default=42)
    for name, owner in COMMON_FLAGS.items():
        default = owner.__dataclass_fields__[name].default
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, dest=name, type=type(default), default=None, help=f"default: {default}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a model-specific override (e.g. loss_type=bce, n_layers=1), applied to each listed model that has it",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    moved = [n for n in names if n in LLM_MODELS]
    if moved:
        parser.error(f"{','.join(moved)} moved (deprecated here): run `python -m trainer.llm_baselines "
                     f"{args.data_dir} --models {','.join(moved)}` (same --backbone, --max-history, ... flags).")
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        parser.error(f"unknown model(s) {unknown}; valid names: {list(MODELS)}")
    common = {k: getattr(args, k) for k in COMMON_FLAGS if getattr(args, k) is not None}
    extra = _parse_set(args.set)
    for key in extra:
        if not any(key in valid_fields(n) for n in names):
            fields = sorted(set().union(*map(valid_fields, names)))
            parser.error(f"--set {key}: no listed model has this field; valid fields: {fields}")

    try:
        load_baseline_data(args.data_dir)  # fail before the first model trains
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    rows = []
    for name in names:
        overrides = {**common, **{k: v for k, v in extra.items() if k in valid_fields(name)}}
        result = train_baseline(name, args.data_dir, seed=args.seed, show_progress=not args.no_progress, **overrides)
        rows.append((name, result))
        print(f"{name}: test HR@1 {result.test_metrics['hr@1']:.4f}, wrote {result.output_path}", file=sys.stderr)

    ks = [k for k in ("hr@1", "ndcg@3", "hr@3", "ndcg@5", "hr@5") if k in rows[0][1].test_metrics]
    header = ["model", "valid hr@1", *[f"test {k}" for k in ks], "epochs (best)", "time (s)"]
    table = [
        [name, f"{r.valid_metrics['hr@1']:.4f}", *[f"{r.test_metrics[k]:.4f}" for k in ks],
         f"{r.epochs_trained} ({r.best_epoch})", f"{r.wall_time_s:.1f}"]
        for name, r in rows
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    first = rows[0][1]
    print(f"\n{first.test_metrics['num_samples']} test samples, seed {args.seed}; JSON in {first.output_path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
