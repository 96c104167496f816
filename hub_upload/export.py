"""A training run → a self-sufficient Hub model folder, written atomically.

Merged (default): `config.json` with `auto_map`, `model.safetensors` (LoRA merged), the remote-code files
(`configuration_speeder.py`, `modeling_speeder.py`, `processing_speeder.py`, `prompt_speeder.py`: the prompt template
travels with the model), the processor (`processor_config.json`, `AutoProcessor` with remote code) with the tokenizer
with `<item>`, `generation_config.json`, the item cache (`item_embeddings.safetensors` +
`item_table.jsonl`), the model card `README.md`, the training curves and `speeder_export.json` (what was exported).
`config.json` names `pipeline_speeder.py` as the `"sequential-recommendation"` pipeline (`custom_pipelines`), so
`transformers.pipeline("sequential-recommendation", model=FOLDER, trust_remote_code=True)` serves the folder; with
`sasrec_retriever`, a SASRec ID model trained as the data's ID features were ships as `retriever_sasrec.safetensors`
for `recommend(..., retriever="sasrec")`. `app.py` is a Gradio app of the folder (`python app.py`, the Spaces
convention), and `item_encoders.json` names the frozen encoders of the item features, so that it can encode new items.

Adapter only: the PEFT adapter (LoRA + the trained item encoder and position table) instead of the model, with the
processor and tokenizer, the item cache, the card and `speeder_base.json`, the note of the base model the adapter goes on.

The target is never the run folder or the data folder, nor inside or above either; `overwrite` replaces only an
earlier export (a folder with `speeder_export.json`). Exported files get the modes of a plain write (0666 / 0777 less
the umask), not the private 0600 that safetensors and the run's files have.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from transformers import AutoTokenizer

from datasets_builder.build import load_built_dataset
from datasets_builder.features import read_feature_manifest, train_id_sasrec
from modeling_speeder import SpeederProcessor, app_speeder, pipeline_speeder
from modeling_speeder.file_utils import write_json_atomically
from modeling_speeder.modeling_speeder import ITEM_CACHE_FILE, ITEM_TABLE_FILE, SpeederItemCache
from modeling_speeder.pipeline_speeder import PIPELINE_TASK, SpeederRecommendationPipeline
from modeling_speeder.retrieval_speeder import SASREC_RETRIEVER_FILE, SpeederSASRecRetriever
from trainer.arguments import SpeederArguments
from trainer.curriculum import stage_modalities
from trainer.training_data import USER_ENCODER_FILE, load_features, user_encoder
from trainer.model_building import build_model
from trainer.run_folder import RUN_CONFIG, STAGE_DONE
from trainer.stages import STAGES

from .card import model_card

EXPORT_INFO = "speeder_export.json"
BASE_NOTE = "speeder_base.json"
RESULTS = "results.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ENCODE_BATCH = 1024
PIPELINE_FILE = Path(pipeline_speeder.__file__).name
APP_FILE = "app.py"  # a copy of modeling_speeder/app_speeder.py
ITEM_ENCODERS_FILE = app_speeder.ITEM_ENCODERS_FILE
# config.json's entry for the pipeline, as `Pipeline.save_pretrained` of a registered custom pipeline writes it.
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {"impl": f"{Path(PIPELINE_FILE).stem}.{SpeederRecommendationPipeline.__name__}", "pt": ["AutoModel"]}
}
# SpeederConfig fields that `build_speeder_model` takes to rebuild the base of an adapter-only export.
BASE_CONFIG_KEYS = (
    "modalities", "text_feature_size", "vision_feature_size", "id_feature_size", "fusion_hidden_size",
    "fusion_num_attention_heads", "fusion_intermediate_size", "num_modality_expert_layers",
    "num_multimodal_expert_layers", "fusion_dropout", "gate_type", "gate_bias_init", "max_history_length",
    "use_history_positions", "history_indices", "candidate_labels",
)


@dataclass
class TrainingRun:
    """What a finished stage of a run folder holds: its config, metrics and adapter."""

    run_dir: Path
    config: dict
    stage: int
    stage_metrics: dict
    finished_stages: list[int]
    results: dict | None

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / f"stage{self.stage}" / "adapter"

    @property
    def is_final(self) -> bool:
        return self.results is not None and self.results.get("final_stage") == self.stage

    @property
    def all_stage_metrics(self) -> dict[int, dict]:
        return {n: json.loads((self.run_dir / f"stage{n}" / STAGE_DONE).read_text()) for n in self.finished_stages}

    def arguments(self, data_dir: str | None = None) -> SpeederArguments:
        names = {f.name for f in fields(SpeederArguments)}
        args = SpeederArguments(**{k: v for k, v in self.config.items() if k in names})
        if data_dir is not None:
            args.data_dir = str(data_dir)
        return args


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / RUN_CONFIG).is_file()


def read_run(run_dir: str | os.PathLike, stage: int | None = None) -> TrainingRun:
    """Checks that `run_dir` is a training run with a finished `stage` (default: the run's final stage)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder: pass the --output_dir of `python trainer/run.py`.")
    if not (run_dir / RUN_CONFIG).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a Speeder training run (no {RUN_CONFIG}): pass the --output_dir of "
            "`python trainer/run.py`."
        )
    finished = sorted(n for n in STAGES if (run_dir / f"stage{n}" / STAGE_DONE).is_file())
    results = json.loads((run_dir / RESULTS).read_text()) if (run_dir / RESULTS).is_file() else None
    if stage is None:
        if results is None:
            raise ValueError(
                f"{run_dir} is unfinished: it has no {RESULTS} (finished stages: {finished or 'none'}). Let the run "
                "finish (rerun the same command with --resume true), or export a finished stage with --stage N."
            )
        stage = int(results["final_stage"])
    if stage not in finished:
        raise ValueError(
            f"Stage {stage} of {run_dir} is not finished (no stage{stage}/{STAGE_DONE}); finished stages: "
            f"{finished or 'none'}."
        )
    adapter = run_dir / f"stage{stage}" / "adapter"
    missing = [name for name in ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{adapter} lacks {missing}: the stage's adapter was not saved completely.")
    return TrainingRun(run_dir, json.loads((run_dir / RUN_CONFIG).read_text()), stage,
                       json.loads((run_dir / f"stage{stage}" / STAGE_DONE).read_text()), finished, results)


@torch.no_grad()
def encode_item_cache(model, features, items, modalities) -> tuple[SpeederItemCache, int]:
    """`encode_items` of every item that has one of `modalities`; returns the cache and the number left out."""
    columns = items.select_columns(["item_index", "item_id", "title"]).to_dict()
    row_of = {index: row for row, index in enumerate(columns["item_index"])}
    if sorted(row_of) != list(range(features.num_items)):
        raise ValueError(
            f"The items table lists {len(row_of)} items but the feature files hold {features.num_items}: rebuild "
            "the features for this data set (`python -m datasets_builder features`)."
        )
    usable = torch.zeros(features.num_items, dtype=torch.bool)
    for modality in modalities:
        usable |= features.present[modality]
    keep = usable.nonzero().flatten()
    model.eval()
    chunks = [model.encode_items(**features.gather(keep[start:start + ENCODE_BATCH], modalities)).float().cpu()
              for start in range(0, len(keep), ENCODE_BATCH)]
    embeddings = torch.cat(chunks) if chunks else torch.zeros(0, model.config.hidden_size)
    rows = [row_of[index] for index in keep.tolist()]
    item_ids = [str(columns["item_id"][row]) for row in rows]
    titles = [columns["title"][row] or None for row in rows]
    return SpeederItemCache(item_ids, titles, embeddings, list(modalities)), features.num_items - len(keep)


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    stage: int | None = None,
    adapter_only: bool = False,
    base_model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    benchmark: str | os.PathLike | None = None,
    model_id: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
    overwrite: bool = False,
    sasrec_retriever: bool = False,
) -> Path:
    """Writes the Hub folder of `run_dir`'s `stage` to `out` (see the module docstring) and returns `out`.

    Args:
        stage: the finished stage to export; default: the run's final stage.
        adapter_only: ship the PEFT adapter and a note of its base model instead of the merged model.
        base_model: the base model named in the card (and, with `adapter_only`, in `adapter_config.json`).
        data_dir: the run's data folder, when it moved since training.
        benchmark: a JSON file of `bench/efficiency.py`, rendered in the card.
        model_id: the Hub repo id (or folder) the card's usage snippet loads; default: `out`.
        dataset_id: the Hub data set the card names.
        overwrite: replace an existing `out`.
        sasrec_retriever: also train SASRec on the run's data (the seed and options of its ID features' manifest)
            and ship it as `retriever_sasrec.safetensors`, the `"sasrec"` retriever of `recommend`. A `--user_token`
            run always ships its user encoder there: the model reads it for every prompt's `<user>` token.
    """
    out = Path(out).absolute()
    run = read_run(run_dir, stage)
    args = run.arguments(data_dir)
    sources = {"run folder": run.run_dir, "data folder": args.data_dir}
    check_export_target(out, sources, overwrite)
    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(
            f"The run's data folder {args.data_dir} is gone: pass its new place with --data-dir."
        )
    benchmark_data = _read_benchmark(benchmark)
    sequences, items, stats = load_built_dataset(args.data_dir)
    features = load_features(args.data_dir, args)
    modalities = tuple(run.stage_metrics.get("modalities") or stage_modalities(STAGES[run.stage], features))

    users = user_encoder(args.data_dir, run.run_dir) if args.user_token else None
    peft_model, tokenizer = build_model(args, features, run.config.get("seed", 42), run.adapter_dir, users=users)
    peft_model.eval()
    config = peft_model.get_base_model().config
    cache, skipped = encode_item_cache(peft_model.get_base_model(), features, items, modalities)
    if len(cache) == 0:
        raise ValueError(f"No item of {args.data_dir} has features of the stage's modalities {list(modalities)}.")
    retriever, retriever_info = None, None
    if users is not None:
        retriever, retriever_info = users, {"source": f"the run's user encoder ({USER_ENCODER_FILE})"}
    elif sasrec_retriever:
        retriever, retriever_info = train_sasrec_retriever(args.data_dir, items, features)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if adapter_only:
            for name in ADAPTER_FILES:
                shutil.copy2(run.adapter_dir / name, tmp / name)
            base = base_model or _backbone_hub_id(args.backbone) or args.backbone
            adapter_config = json.loads((tmp / "adapter_config.json").read_text())
            adapter_config["base_model_name_or_path"] = base
            write_json_atomically(tmp / "adapter_config.json", adapter_config)
            write_json_atomically(tmp / BASE_NOTE, {
                "base_model": base, "backbone": args.backbone, "seed": run.config.get("seed"),
                "speeder_config": {key: getattr(config, key) for key in BASE_CONFIG_KEYS},
                "how": "set_seed(seed), then modeling_speeder.backbones.build_speeder_model(backbone, "
                       "**speeder_config) builds the base this adapter goes on (PeftModel.from_pretrained).",
            })
        else:
            merged = peft_model.merge_and_unload()
            merged.config.custom_pipelines = CUSTOM_PIPELINES
            merged.save_pretrained(tmp)
            shutil.copyfile(pipeline_speeder.__file__, tmp / PIPELINE_FILE)
            shutil.copyfile(app_speeder.__file__, tmp / APP_FILE)
            base = base_model or _backbone_hub_id(args.backbone)
        write_json_atomically(tmp / ITEM_ENCODERS_FILE, item_encoders(args.data_dir, items, cache.modalities))
        cache.save(tmp)
        if retriever is not None:
            retriever.save(tmp / SASREC_RETRIEVER_FILE)
        SpeederProcessor.from_model_config(config, tokenizer).save_pretrained(tmp)  # with the tokenizer
        _check_tokenizer(tmp, config.item_token_id)
        curves = _copy_training_curves(run, tmp)
        info = {
            "run": run.run_dir.name, "stage": run.stage, "format": "adapter" if adapter_only else "merged",
            "model_id": model_id or str(out), "base_model": base, "dataset_id": dataset_id,
            "modalities": list(modalities), "items": len(cache), "items_without_features": skipped,
            "candidate_labels": list(config.candidate_labels),
            "pipeline": None if adapter_only else PIPELINE_TASK,
            "retrievers": ["item_cache"] + (["sasrec"] if retriever is not None else []),
            "sasrec_retriever": retriever_info,
        }
        write_json_atomically(tmp / EXPORT_INFO, info)
        example = _usage_example(sequences, items, cache, config.max_history_length)
        card = model_card(run, args, stats, info, curves, example, benchmark_data, license=license)
        card.save(tmp / "README.md")
        _plain_modes(tmp)  # mkdtemp, safetensors and the run's copied files are private (0700 / 0600)
        check_export_target(out, sources, overwrite)  # again: the folder may have changed meanwhile
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def train_sasrec_retriever(data_dir: str | os.PathLike, items, features) -> tuple[SpeederSASRecRetriever, dict]:
    """SASRec trained on `data_dir` as its ID features were (the seed and options their manifest records, else the
    defaults), as the export's `"sasrec"` retriever, and a note of it: options, test metrics on the stored pools, and
    whether its item table equals the ID features (then it is the very encoder of Speeder's ID modality)."""
    result, seed, options = train_id_sasrec(data_dir)
    columns = items.select_columns(["item_index", "item_id"]).to_dict()
    id_of = dict(zip(columns["item_index"], columns["item_id"]))
    retriever = SpeederSASRecRetriever.from_sasrec(result.model.cpu(), [str(id_of[i]) for i in range(len(id_of))])
    id_features = features.features.get("id")
    same = id_features is not None and tuple(id_features.shape) == tuple(result.item_embeddings.shape) and bool(
        torch.allclose(id_features.float(), result.item_embeddings, atol=1e-5))
    note = {"seed": seed, "options": options, "test_metrics": result.test_metrics, "equals_id_features": same}
    return retriever, note


def item_encoders(data_dir: str | os.PathLike, items, modalities: list[str]) -> dict:
    """Per modality of the item cache, the frozen encoder of its features (from the data's feature manifests; None
    when a file has none): `{"encoder", "kind", "options", "dim"}`, and for text an `example` of the item texts."""
    note = {}
    for modality in modalities:
        manifest = read_feature_manifest(Path(data_dir) / "features" / f"{modality}.safetensors")
        key = manifest["key"] if manifest else None
        note[modality] = None if key is None else {
            "encoder": key.get("encoder"), "kind": key.get("kind"), "options": key.get("options") or {},
            "dim": manifest.get("dim"),
        }
    if note.get("text") is not None:
        note["text"]["example"] = next((text for text in items["text"] if text), None)
    return note


def check_export_target(out: Path, sources: dict[str, str | os.PathLike], overwrite: bool):
    """Refuse an export target that is, contains or lies inside one of `sources` (`{"run folder": path, ...}`), an
    existing non-empty target without `overwrite`, and with it anything but an earlier export."""
    target = Path(out).resolve()
    for label, source in sources.items():
        source = Path(source).resolve()
        relation = "is" if target == source else "is inside" if source in target.parents else None
        relation = relation or ("contains" if target in source.parents else None)
        if relation:
            raise ValueError(
                f"--out {out} {relation} the {label} {source}: the export would write into or replace it. Choose "
                f"an --out outside {source}."
            )
    if not os.path.lexists(out) or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another --out or pass --overwrite.")
    if out.is_symlink() or not (out / EXPORT_INFO).is_file():
        raise FileExistsError(
            f"{out} is not a folder written by `python -m hub_upload export` (it has no {EXPORT_INFO}): --overwrite "
            "replaces only an earlier export. Choose another --out, or move it away yourself."
        )


def _plain_modes(folder: Path):
    """Gives `folder` and everything in it the modes of a plain write: 0777 (folders) / 0666 (files) less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_folder(tmp: Path, out: Path):
    """Renames `tmp` to `out`; an existing `out` is moved aside first and removed last."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_tokenizer(folder: Path, item_token_id: int):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.convert_tokens_to_ids("<item>") != item_token_id:
        raise RuntimeError(f"The exported tokenizer's <item> id differs from the model's {item_token_id}.")


def _copy_training_curves(run: TrainingRun, folder: Path) -> dict[int, str]:
    curves = {}
    for number in run.finished_stages:
        source = run.run_dir / f"stage{number}" / "training_curve.png"
        if number <= run.stage and source.is_file():
            (folder / "training_curves").mkdir(exist_ok=True)
            curves[number] = f"training_curves/stage{number}.png"
            shutil.copy2(source, folder / curves[number])
    return curves


def _read_benchmark(path) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--benchmark {path}: no such file (write it with `python bench/efficiency.py`).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--benchmark {path} is not JSON: {error}") from None


def _backbone_hub_id(backbone: str) -> str | None:
    """The Hub id of the run's backbone, when it has one (the tiny test backbone has none)."""
    named = {"tiny": None, "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    if backbone in named:
        return named[backbone]
    if Path(backbone).is_dir():
        config = Path(backbone) / "config.json"
        name = json.loads(config.read_text()).get("_name_or_path") if config.is_file() else None
        return name if name and not Path(name).is_absolute() and name.count("/") == 1 else None
    return backbone


def _usage_example(sequences, items, cache: SpeederItemCache, max_history: int) -> dict:
    """A real held-out sample (test split, else valid) for the card's snippet: item ids and the true next item."""
    id_of = {row["item_index"]: str(row["item_id"]) for row in items.select_columns(["item_index", "item_id"])}
    for split in ("test", "valid", "train"):
        if split not in sequences:
            continue
        for row in sequences[split].select(range(min(len(sequences[split]), 200))):
            history = [id_of[i] for i in row["history"][-max_history:]]
            candidates = [id_of[i] for i in row["candidates"]]
            if all(i in cache for i in history + candidates):
                return {"split": split, "history": history, "candidates": candidates,
                        "target": candidates[row["label"]]}
    first = cache.item_ids[: min(6, len(cache))]
    return {"split": None, "history": first[:1], "candidates": first[1:], "target": None}


__all__ = [
    "APP_FILE", "CUSTOM_PIPELINES", "EXPORT_INFO", "ITEM_CACHE_FILE", "ITEM_ENCODERS_FILE", "ITEM_TABLE_FILE",
    "TrainingRun", "check_export_target", "export_run", "is_run_dir", "item_encoders", "read_run",
    "train_sasrec_retriever",
]
