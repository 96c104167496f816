"""Command line: `python -m datasets_builder {build,features,movielens,retrieved-pools,synthetic} ...` (`--help` on
each).

    build            raw files -> DATA_DIR (items/, sequences/, stats.json)
    features         DATA_DIR -> DATA_DIR/features/{text,vision,id}.safetensors
    movielens        build + features on the offline MovieLens-100K (from the recbole wheel) in one command
    retrieved-pools  DATA_DIR -> POOLS_DIR: the same rows with pools of SASRec-retrieved negatives (hard negatives)
    synthetic        write the generated image-dependent data set (Amazon 2018 format + PNG images) to RAW_DIR

Every step is resumable (a rerun with the same settings and inputs is skipped) and atomic.
"""

import argparse
import dataclasses
import json
import logging
import sys

import yaml

from .build import DEFAULT_ENCODERS, BuildConfig, build_dataset, movielens_config
from .features import compute_item_features
from .readers import FORMATS
from .retrieved_pools import write_retrieved_pools
from .synthetic import SyntheticConfig, generate_synthetic_dataset



def _int_at_least(minimum: int, hint: str = ""):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}{hint}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}{hint}")
        return value

    return parse


def _session_gap(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected seconds >= 0 (86400 = the paper's one-day window) or 'none' (one sequence per user), "
            f"got {text!r}"
        )
    return value


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. epochs=20), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_sequencing_args(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("sequencing (the paper's data rules 2-7)")
    group.add_argument("--min-item-interactions", metavar="N", type=_int_at_least(1, "; 1 keeps every item"),
                       default=8, help="item filter, applied once (default 8)")
    group.add_argument("--session-gap", metavar="SECONDS|none", type=_session_gap, default=86400.0,
                       help="seconds; a longer gap starts a new sequence; 'none' = one sequence per user "
                            "(default 86400)")
    group.add_argument("--min-sequence-length", metavar="N", type=_int_at_least(2, "; a target needs a history"),
                       default=9, help="sequence filter, applied once (default 9)")
    group.add_argument("--max-history", metavar="N", type=_int_at_least(1), default=None,
                       help="stored history keeps the most recent items (default: --config's max_history, else "
                            f"{BuildConfig.max_history})")
    group.add_argument("--config", metavar="YAML", default=None,
                       help="the trainer config (configs/*.yaml) the data is built for: its max_history is the stored "
                            "history length, so the data and the model read the same number of items")
    group.add_argument("--num-candidates", metavar="M", default=5, help="candidate pool size m (default 5)",
                       type=_int_at_least(2, "; the target plus at least one negative"))
    group.add_argument("--extra-pools", metavar="K", type=_int_at_least(0, "; 0 stores only the paper's one pool"),
                       default=10, help="seeded candidate pools stored per valid/test sequence besides the paper's "
                                        "one, in the valid_pools/test_pools splits (default 10)")
    group.add_argument("--augment-prefixes", action="store_true",
                       help="also add every prefix of a train sequence with >= --min-sequence-length items")
    group.add_argument("--seed", type=int, default=42, help="split, candidate, PPT (and SASRec) seed (default 42)")
    group.add_argument("--force", action="store_true", help="recompute even when the outputs are up to date")


def _add_feature_args(parser: argparse.ArgumentParser, vision_default: str):
    group = parser.add_argument_group("item features")
    group.add_argument("--text-encoder", default=DEFAULT_ENCODERS["text"],
                       help="all-MiniLM-L6-v2 | <sentence-transformers folder> | backbone:<causal-LM folder, .gguf "
                            f"or smollm2> | none (default {DEFAULT_ENCODERS['text']})")
    group.add_argument("--vision-encoder", default=vision_default,
                       help="efficientnet-lite0 | timm:<name>[:<weights file>] | blip2:<folder> | none "
                            f"(default {vision_default})")
    group.add_argument("--id-encoder", default=DEFAULT_ENCODERS["id"], choices=["sasrec", "none"],
                       help="sequential ID features from SASRec trained on the train split (default sasrec)")
    group.add_argument("--id-encoder-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="override passed to baselines.train_baseline('sasrec', ...); repeatable")
    group.add_argument("--device", default="cpu", help="torch device for the encoders (default cpu)")
    group.add_argument("--batch-size", type=_int_at_least(1), default=64, help="encoder batch size (default 64)")
    group.add_argument("--text-max-length", type=_int_at_least(1), default=128,
                       help="token limit of the backbone text encoder (default 128)")
    group.add_argument("--image-size", type=_int_at_least(16), default=224,
                       help="EfficientNet input resolution (default 224)")


def _compute_features(data_dir: str, args):
    for modality, status in compute_item_features(data_dir, **_feature_kwargs(args)).items():
        print(f"{modality}: {status}")


def _feature_kwargs(args) -> dict:
    return {
        "text_encoder": args.text_encoder,
        "vision_encoder": args.vision_encoder,
        "id_encoder": args.id_encoder,
        "device": args.device,
        "batch_size": args.batch_size,
        "text_max_length": args.text_max_length,
        "image_size": args.image_size,
        "seed": args.seed,
        "id_encoder_kwargs": dict(args.id_encoder_arg),
        "force": args.force,
    }


def config_max_history(path: str) -> int:
    """The `max_history` of a trainer config YAML; raises FileNotFoundError / ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file (a trainer config such as configs/demo.yaml).") from None
    value = config.get("max_history") if isinstance(config, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"--config {path}: max_history must be an integer >= 1, got {value!r}.")
    return value


def _sequencing_kwargs(args) -> dict:
    names = ("min_item_interactions", "session_gap", "min_sequence_length", "num_candidates", "extra_pools",
             "augment_prefixes", "seed")
    max_history = args.max_history
    if max_history is None:
        max_history = config_max_history(args.config) if args.config else BuildConfig.max_history
    return {name: getattr(args, name) for name in names} | {"max_history": max_history}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets_builder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="raw files -> DATA_DIR (items, sequences, stats.json)")
    build.add_argument("--format", required=True, choices=FORMATS)
    build.add_argument("--interactions", "--reviews", "--inter", required=True, metavar="FILE",
                       help="reviews JSON lines (plain or .gz) or a RecBole .inter file")
    build.add_argument("--metadata", "--meta", "--item", metavar="FILE",
                       help="item metadata JSON lines (plain or .gz) or a RecBole .item file")
    build.add_argument("--out", required=True, metavar="DATA_DIR")
    build.add_argument("--image-dir", metavar="DIR", help="folder of downloaded item images")
    build.add_argument("--image-pattern", metavar="PATTERN", default="{item_id}.jpg",
                       help="image file name inside --image-dir; fields {item_id}, {url_basename} "
                            "(default {item_id}.jpg)")
    build.add_argument("--text-fields", metavar="A,B", default="",
                       help="comma-separated metadata fields appended to the title in the item text")
    build.add_argument("--text-template", metavar="TEMPLATE",
                       help="item text format, e.g. '{title} ({release_year}), {class}'")
    build.add_argument("--title-field", metavar="NAME",
                       help="title column of a RecBole .item file (default: title, movie_title, ...)")
    build.add_argument("--user-field", default="user_id", help="RecBole user column (default user_id)")
    build.add_argument("--item-field", default="item_id", help="RecBole item column (default item_id)")
    build.add_argument("--time-field", default="timestamp", help="RecBole timestamp column (default timestamp)")
    build.add_argument("--timestamp-unit", choices=["s", "ms"], help="default: ms for amazon2023, s otherwise")
    build.add_argument("--require-title", action="store_true", help="drop items without a title (the paper's rule)")
    build.add_argument("--require-image", action="store_true", help="drop items without an image file")
    build.add_argument("--skip-bad-lines", action="store_true",
                       help="skip and count malformed lines instead of failing")
    _add_sequencing_args(build)

    features = commands.add_parser("features", help="DATA_DIR -> DATA_DIR/features/*.safetensors")
    features.add_argument("data_dir", metavar="DATA_DIR")
    features.add_argument("--seed", type=int, default=42, help="SASRec seed (default 42)")
    features.add_argument("--force", action="store_true", help="recompute even when the manifest matches")
    _add_feature_args(features, vision_default=DEFAULT_ENCODERS["vision"])

    movielens = commands.add_parser("movielens", help="build + features on the offline MovieLens-100K")
    movielens.add_argument("--out", required=True, metavar="DATA_DIR")
    _add_sequencing_args(movielens)
    _add_feature_args(movielens, vision_default="none")

    pools = commands.add_parser("retrieved-pools",
                                help="DATA_DIR -> POOLS_DIR with pools of SASRec-retrieved negatives")
    pools.add_argument("data_dir", metavar="DATA_DIR", help="a built DATA_DIR with its features")
    pools.add_argument("--out", required=True, metavar="POOLS_DIR")
    pools.add_argument("--num-candidates", metavar="K", default=20,
                       type=_int_at_least(2, "; the target and a negative"),
                       help="pool size: the target plus K-1 retrieved negatives (default 20)")
    pools.add_argument("--seed", type=int, default=42,
                       help="seed of the candidates' order, the random negatives and the folds (default 42)")
    pools.add_argument("--cross-fit-folds", type=int, default=5, metavar="F",
                       help="score each train row with a SASRec trained on the other F-1 folds of train users, as "
                            "hard as a test user's pool (default 5; 0: the SASRec that saw the row)")
    pools.add_argument("--random-negatives", type=int, default=0, metavar="M",
                       help="of the K-1 negatives, M drawn at random from the items the user never had, the rest "
                            "retrieved (default 0)")
    pools.add_argument("--top-k-pools", action="store_true",
                       help="a pool is the retriever's top K itself, the pool a re-ranker meets; rows whose target "
                            "it misses are dropped (default: the target plus K-1 retrieved negatives for every row)")
    pools.add_argument("--prefix-min-history", type=int, default=0, metavar="N",
                       help="also write a train row per history prefix of >= N items, retrieved for its own target "
                            "(train with --prefix_min_history 0 then; default 0: none)")

    synthetic = commands.add_parser("synthetic", help="write the generated image-dependent raw data set")
    synthetic.add_argument("--out", required=True, metavar="RAW_DIR")
    for field in dataclasses.fields(SyntheticConfig):
        synthetic.add_argument(f"--{field.name.replace('_', '-')}", type=field.type,
                               default=field.default, help=f"(default {field.default})")
    return parser


def _print_build(stats: dict, out: str):
    table = {key: stats[key] for key in ("interactions", "items", "sequences", "avg_sequence_length")}
    ppt = {name: counts["samples"] for name, counts in stats["ppt_counts"].items()}
    print(f"{out}: {json.dumps(table)}; splits {json.dumps(stats['split_sizes'])}; PPT {json.dumps(ppt)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            try:
                config = BuildConfig(
                    format=args.format, interactions=args.interactions, metadata=args.metadata,
                    image_dir=args.image_dir, image_pattern=args.image_pattern,
                    text_fields=tuple(f.strip() for f in args.text_fields.split(",") if f.strip()),
                    text_template=args.text_template, title_field=args.title_field, user_field=args.user_field,
                    item_field=args.item_field, time_field=args.time_field, timestamp_unit=args.timestamp_unit,
                    require_title=args.require_title, require_image=args.require_image,
                    skip_bad_lines=args.skip_bad_lines, **_sequencing_kwargs(args),
                )
            except ValueError as error:
                parser.error(str(error))
            _print_build(build_dataset(config, args.out, force=args.force), args.out)
            print(f"next: python -m datasets_builder features {args.out}")
        elif args.command == "features":
            _compute_features(args.data_dir, args)
        elif args.command == "movielens":
            stats = build_dataset(movielens_config(**_sequencing_kwargs(args)), args.out, force=args.force)
            _print_build(stats, args.out)
            _compute_features(args.out, args)
        elif args.command == "retrieved-pools":
            stats = write_retrieved_pools(args.data_dir, args.out, args.num_candidates, args.seed,
                                          cross_fit_folds=args.cross_fit_folds,
                                          random_negatives=args.random_negatives,
                                          top_k_pools=args.top_k_pools,
                                          prefix_min_history=args.prefix_min_history)
            print(f"{args.out}: {json.dumps(stats.get('split_sizes'))} rows with pools of {args.num_candidates} "
                  f"retrieved by SASRec; the target is in SASRec's top {args.num_candidates} for "
                  f"{json.dumps(stats['retrieved_pools']['target_in_retriever_top_k'])} of the rows")
        elif args.command == "synthetic":
            values = {field.name: getattr(args, field.name) for field in dataclasses.fields(SyntheticConfig)}
            try:
                config = SyntheticConfig(**values)
            except ValueError as error:
                parser.error(str(error))
            record = generate_synthetic_dataset(args.out, config)
            print(f"{args.out}: {len(record['items'])} items, {record['interactions']} interactions")
            print(
                f"next: python -m datasets_builder build --format amazon2018 --interactions {args.out}/reviews.jsonl "
                f"--metadata {args.out}/metadata.jsonl --image-dir {args.out}/images "
                "--image-pattern '{item_id}.png' --out DATA_DIR"
            )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:  # the user's to fix: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
