"""Push an exported folder (or a run, exported on the fly) to the Hub with `create_repo` + `upload_folder`.

The token comes from `HF_TOKEN` or the stored login (`huggingface_hub.get_token`); it is passed to `HfApi` and
nowhere else: never printed, logged or written. Without a token, or with the Hub offline, the push stops before
anything is sent.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants, get_token

from datasets_builder.build import load_built_dataset
from modeling_speeder.file_utils import write_json_atomically

from .export import EXPORT_INFO, export_run, is_run_dir


class PushError(RuntimeError):
    """A push that cannot start (no token, offline, nothing to push); nothing was sent."""


def hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in constants.ENV_VARS_TRUE_VALUES
    return flag or constants.is_offline_mode()


def require_token() -> str:
    """The Hub token of `HF_TOKEN` or the stored login; PushError when offline or there is none."""
    if hub_offline():
        raise PushError("Cannot push: the Hub is offline (HF_HUB_OFFLINE is set). Unset HF_HUB_OFFLINE on a machine "
                        "that reaches huggingface.co; nothing was sent.")
    token = get_token()
    if not token:
        raise PushError("Cannot push: no Hugging Face token. Set HF_TOKEN or log in with `hf auth login`; nothing "
                        "was sent.")
    return token


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """(path in the repo, size in bytes) of every file `upload_folder` would send."""
    return sorted((path.relative_to(folder).as_posix(), path.stat().st_size)
                  for path in folder.rglob("*") if path.is_file() and ".git" not in path.relative_to(folder).parts)


@contextmanager
def staged_folder(source: Path, repo_id: str, dataset_id: str | None, export_options: dict):
    """A folder ready to upload: a run exported into a temporary folder, or a copy of an exported folder whose card
    names `repo_id` (and `dataset_id`) instead of the local path it was exported for."""
    with tempfile.TemporaryDirectory(prefix="speeder-push-") as tmp:
        staged = Path(tmp) / "model"
        if is_run_dir(source):
            export_run(source, staged, model_id=repo_id, dataset_id=dataset_id, **export_options)
        else:
            if not (source / EXPORT_INFO).is_file():
                raise PushError(f"{source} is neither a training run (run_config.json) nor a folder written by "
                                "`python -m hub_upload export` (speeder_export.json).")
            try:
                shutil.copytree(source, staged, copy_function=os.link)  # hard links: no copy of the weights
            except OSError:
                shutil.rmtree(staged, ignore_errors=True)
                shutil.copytree(source, staged)
            _retarget_card(staged, repo_id, dataset_id)
        yield staged


def _retarget_card(folder: Path, repo_id: str, dataset_id: str | None):
    info = json.loads((folder / EXPORT_INFO).read_text())
    readme = folder / "README.md"
    if readme.is_file():
        card = ModelCard(readme.read_text())
        if info.get("model_id") and info["model_id"] != repo_id:
            card.text = card.text.replace(f'"{info["model_id"]}"', f'"{repo_id}"')
        if dataset_id:
            card.data.datasets = [dataset_id]
        readme.unlink()  # a hard link: replace it, never write through to the exported folder
        card.save(readme)
    info.update(model_id=repo_id, **({"dataset_id": dataset_id} if dataset_id else {}))
    (folder / EXPORT_INFO).unlink()
    write_json_atomically(folder / EXPORT_INFO, info)


def commit_message(folder: Path) -> str:
    """Names the run, the stage and the format, e.g. "Upload Speeder run ml100k-full, stage 3 (merged)"."""
    info = json.loads((folder / EXPORT_INFO).read_text())
    return f"Upload Speeder run {info['run']}, stage {info['stage']} ({info['format']})"


def push(
    source: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    dataset_dir: str | os.PathLike | None = None,
    dataset_repo_id: str | None = None,
    print_fn=print,
    **export_options,
) -> str | None:
    """Uploads `source` (a run or an exported folder) to the model repo `repo_id`; returns the commit URL, or None
    for a dry run, which only lists the files and their sizes.

    `dataset_dir` also pushes the processed data set (`DatasetDict.push_to_hub` of its sequences and items, plus the
    feature files) to `dataset_repo_id` (default `<repo_id>-data`), which the card then names.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: pass a training run or an exported folder.")
    given = [name for name, value in export_options.items() if value not in (None, False)]
    if given and not is_run_dir(source):
        raise PushError(f"{', '.join('--' + n.replace('_', '-') for n in given)} apply to a training run; {source} "
                        "is an exported folder: export it again with these options.")
    if dataset_dir is not None:
        dataset_repo_id = dataset_repo_id or f"{repo_id}-data"
        sequences, items, _ = load_built_dataset(dataset_dir)
    token = None if dry_run else require_token()  # before any export work, and before anything is sent
    with staged_folder(source, repo_id, dataset_repo_id, export_options) as folder:
        files = folder_files(folder)
        message = commit_message(folder)
        if dry_run:
            print_fn(f"Dry run: would upload {len(files)} files ({human_size(sum(s for _, s in files))}) to model repo "
                     f"{repo_id}{' (private)' if private else ''}, revision {revision or 'main'}, commit "
                     f"{message!r}:")
            for path, size in files:
                print_fn(f"  {human_size(size):>10}  {path}")
            if dataset_dir is not None:
                splits = ", ".join(f"{name} ({len(split)} rows)" for name, split in sequences.items())
                print_fn(f"and the data set {dataset_dir} to dataset repo {dataset_repo_id}: sequences {splits}; "
                         f"items ({len(items)} rows); features/*.safetensors; stats.json")
            return None
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message,
                                   repo_type="model")
        print_fn(f"Pushed {len(files)} files to {commit.commit_url}")
    if dataset_dir is not None:
        api.create_repo(dataset_repo_id, private=private, exist_ok=True, repo_type="dataset")
        data_message = message.replace("Upload Speeder run", "Upload the data set of Speeder run")
        sequences.push_to_hub(dataset_repo_id, private=private, token=token, commit_message=data_message)
        items.push_to_hub(dataset_repo_id, config_name="items", private=private, token=token,
                          commit_message=data_message)
        api.upload_folder(repo_id=dataset_repo_id, repo_type="dataset", folder_path=str(dataset_dir),
                          allow_patterns=["features/*.safetensors", "stats.json"], commit_message=data_message)
        print_fn(f"Pushed the data set to https://huggingface.co/datasets/{dataset_repo_id}")
    return commit.commit_url


__all__ = ["PushError", "folder_files", "push", "require_token"]
