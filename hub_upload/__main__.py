"""Command line: export a run to a Hub folder, or push a run / folder to the Hub.

    python -m hub_upload export RUN_DIR --out FOLDER [--stage N] [--adapter-only] [--benchmark JSON]
        [--sasrec-retriever]
    python -m hub_upload push RUN_OR_FOLDER --repo-id NAME [--private] [--revision BRANCH] [--dry-run]
        [--dataset-dir DATA_DIR]
"""

import argparse
import sys

from .export import export_run
from .upload import PushError, push


def _export_options(parser: argparse.ArgumentParser):
    parser.add_argument("--stage", type=int, help="finished stage to export (default: the run's final stage)")
    parser.add_argument("--adapter-only", action="store_true",
                        help="ship the PEFT adapter and a note of its base model instead of the merged model")
    parser.add_argument("--base-model", help="base model named in the card / adapter (default: the run's backbone)")
    parser.add_argument("--data-dir", help="the run's data folder, when it moved since training")
    parser.add_argument("--benchmark", help="JSON of bench/efficiency.py, rendered in the card")
    parser.add_argument("--license", help="card license (default: apache-2.0 for the built-in backbones, else other)")
    parser.add_argument("--sasrec-retriever", action="store_true",
                        help="also train SASRec on the run's data and ship it as retriever_sasrec.safetensors, the "
                             "'sasrec' retriever of full-catalogue recommend")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub_upload", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="write a self-sufficient Hub model folder from a training run")
    export.add_argument("run_dir", help="--output_dir of trainer/run.py")
    export.add_argument("--out", required=True, help="folder to write (atomically)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export at --out (never a folder that is not an export)")
    export.add_argument("--repo-id", dest="model_id",
                        help="Hub repo id the card's usage snippet loads (default: the --out folder)")
    export.add_argument("--dataset-id", help="Hub data set id the card names")
    _export_options(export)

    upload = commands.add_parser("push", help="upload a run (exported on the fly) or an exported folder")
    upload.add_argument("source", metavar="RUN_OR_FOLDER")
    upload.add_argument("--repo-id", required=True, help="e.g. your-name/speeder-ml100k")
    upload.add_argument("--private", action="store_true")
    upload.add_argument("--revision", help="branch to push to (created if missing)")
    upload.add_argument("--dry-run", action="store_true", help="list the files and sizes; send nothing")
    upload.add_argument("--dataset-dir", help="also push this processed data set (python -m datasets_builder output)")
    upload.add_argument("--dataset-repo-id", help="data set repo (default: <repo-id>-data)")
    _export_options(upload)

    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    try:
        if command == "export":
            out = export_run(args.pop("run_dir"), args.pop("out"), **args)
            print(f"Exported to {out}")
        else:
            push(args.pop("source"), **args)
    except (FileNotFoundError, FileExistsError, ValueError, PushError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
