"""The model card of an exported run: YAML metadata with a model-index, then the run's own figures only."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_speeder.modeling_speeder import ITEM_CACHE_FILE, ITEM_TABLE_FILE

PAPER = "arXiv:2511.05885"
CITATION = """@article{speeder2025,
  title={A Remarkably Efficient Paradigm to Multimodal Large Language Models for Sequential Recommendation},
  journal={arXiv preprint arXiv:2511.05885},
  year={2025}
}"""
# (results key, card label, model-index metric type)
CARD_METRICS = (("hr@1", "HR@1", "hr@1"), ("valid_ratio", "ValidRatio", "valid_ratio"),
                ("vhr@1", "VHR@1", "vhr@1"), ("ndcg@5", "NDCG@5", "ndcg@5"))
EXTRA_METRICS = (("hr@3", "HR@3"), ("hr@5", "HR@5"), ("ndcg@3", "NDCG@3"), ("ppt_accuracy", "PPT accuracy"))
PERMISSIVE_BACKBONES = ("tiny", "smollm2-135m-instruct")


def model_card(run, args, stats: dict, info: dict, curves: dict, example: dict, benchmark: dict | None,
               license: str | None = None) -> ModelCard:
    """The card of `run`'s exported stage. `info` is the export record, `example` a held-out sample's item ids."""
    split, metrics = ("test", run.results["test"]) if run.is_final else ("validation", run.stage_metrics["valid"])
    data_name = info.get("dataset_id") or Path(args.data_dir).name
    model_name = (info.get("model_id") or "").rstrip("/").split("/")[-1] or f"speeder-{run.run_dir.name}"
    eval_results = [
        EvalResult(task_type="sequential-recommendation", task_name="Sequential recommendation",
                   dataset_type=data_name, dataset_name=data_name, dataset_split=split, metric_type=metric_type,
                   metric_name=label, metric_value=round(float(metrics[key]), 4))
        for key, label, metric_type in CARD_METRICS if key in metrics
    ]
    adapter = info["format"] == "adapter"
    data = ModelCardData(
        model_name=model_name,
        library_name="peft" if adapter else "transformers",
        license=license or ("apache-2.0" if args.backbone in PERMISSIVE_BACKBONES else "other"),
        base_model=info.get("base_model") or None,
        datasets=[info["dataset_id"]] if info.get("dataset_id") else None,
        tags=["speeder", "sequential-recommendation", "recommendation", "multimodal", "custom_code"]
        + (["peft", "lora"] if adapter else []),
        eval_results=eval_results or None,
    )
    sections = [
        f"# {model_name}\n",
        _about(args, info),
        _results(run, args, split, metrics, data_name),
        _stages(run, args, curves),
        _training(run, args, stats),
    ]
    if benchmark is not None:
        sections.append(_efficiency(benchmark))
    sections += [_usage(info, example, args), _limitations(run, args, info, split), _citation()]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


def _about(args, info: dict) -> str:
    modalities = ", ".join(info["modalities"])
    base = info.get("base_model") or f"the `{args.backbone}` backbone"
    return f"""## What this is

A [Speeder](https://arxiv.org/abs/2511.05885) sequential recommender: a causal language model ({base}) reads a
prompt in which every item of the user's history and every candidate is ONE soft token, a multimodal embedding that
the item encoder (modality adapters, a Mixture of Modality Experts and an output adapter) compresses from pre-computed
item features ({modalities}). Positions of history items are added from a learned table (Position Prompt Learning);
the model answers with the label of the next item among the candidates, and ranks all candidates in one forward pass
from the logits of their labels.

This folder holds {info['items']} item embeddings (`{ITEM_CACHE_FILE}`, one row per item of `{ITEM_TABLE_FILE}`), so
it recommends by item id with no feature encoder; new items can be encoded from their features with `add_items`.
It was exported from stage {info['stage']} of training run `{info['run']}`
({'LoRA adapter, see `speeder_base.json`' if info['format'] == 'adapter' else 'LoRA merged into the weights'}).
"""


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _measured(args) -> str:
    if args.eval_generate:
        return ("ValidRatio is the share of free-generated answers that name exactly one candidate, HR@1 is measured "
                "on valid answers and VHR@1 = ValidRatio × HR@1.")
    return ("The run did not generate free answers (`eval_generate` off): HR@1 comes from one-pass scoring of the "
            "candidate labels, every answer counts as valid (ValidRatio = 1 by construction) and VHR@1 = HR@1.")


def _results(run, args, split: str, metrics: dict, data_name: str) -> str:
    keys = [(k, label) for k, label, _ in CARD_METRICS] + list(EXTRA_METRICS)
    shown = [(k, label) for k, label in keys if k in metrics]
    count = metrics.get("num_samples")
    if args.max_eval_samples is not None and count is not None:
        samples = f"the first {count} samples (the run evaluated at most `max_eval_samples` = {args.max_eval_samples})"
    else:
        samples = f"all {count} samples" if count is not None else "all samples"
    return f"""## Results

{split.capitalize()} split of `{data_name}`: {samples}, with the candidate pools stored in the data set.

{_table([label for _, label in shown], [[metrics[k] for k, _ in shown]])}
{_measured(args)} NDCG@k and HR@k rank the candidates by their label logits.
"""


def _stages(run, args, curves: dict) -> str:
    rows = []
    for number, stage in sorted(run.all_stage_metrics.items()):
        if number > run.stage:
            continue
        valid = stage.get("valid", {})
        runtime = stage.get("train_runtime_s")
        rows.append([f"{number}", ", ".join(stage.get("modalities", [])), stage.get("train_rows"),
                     f"{float(runtime):.1f}" if runtime is not None else None] + [valid.get(k) for k in
                                                       ("hr@1", "valid_ratio", "vhr@1", "ndcg@5", "ppt_accuracy")])
    images = "".join(f"\n![Stage {n} training curve]({path})\n" for n, path in sorted(curves.items()))
    return f"""## Training stages (Modality-aware Progressive Optimization)

Validation metrics after each stage of this run:

{_table(["stage", "modalities", "train rows", "train time (s)", "HR@1", "ValidRatio", "VHR@1", "NDCG@5",
         "PPT accuracy"], rows)}{images}"""


def _training(run, args, stats: dict) -> str:
    config = dict(run.config)
    config["data_dir"] = Path(str(config.get("data_dir", ""))).name  # no local paths in a public card
    rows = [[f"`{key}`", f"`{value}`" if value not in ("", None) else "—"] for key, value in sorted(config.items())]
    data = ""
    if stats:
        facts = [("items", stats.get("items")), ("sequences", stats.get("sequences")),
                 ("interactions", stats.get("interactions")), ("split sizes", stats.get("split_sizes"))]
        data = "Data set: " + ", ".join(f"{name} {value}" for name, value in facts if value is not None) + ".\n\n"
    return f"""## Training

{data}Arguments of `trainer/run.py` (`run_config.json`):

{_table(["argument", "value"], rows)}"""


def _efficiency(benchmark: dict) -> str:
    """Renders `bench/efficiency.py` output generically: its `table` (markdown or rows) or `rows`, then its scalar
    fields, the scalar entries of its flat dicts (e.g. `machine`) and its notes."""
    table = benchmark.get("table") or benchmark.get("rows")
    if isinstance(table, str):
        body = table.strip() + "\n"
    elif isinstance(table, list) and table and all(isinstance(row, dict) for row in table):
        header = list(dict.fromkeys(key for row in table for key in row))
        body = _table(header, [[row.get(key) for key in header] for row in table])
    else:
        body = ""
    scalar = (str, int, float, bool)
    lines = []
    for key, value in benchmark.items():
        if key in ("table", "rows"):
            continue
        if isinstance(value, scalar):
            lines.append(f"- {key}: {_fmt(value)}")
        elif isinstance(value, dict) and any(isinstance(v, scalar) for v in value.values()):
            lines.append(f"- {key}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items() if isinstance(v, scalar)))
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            lines += [f"- {v}" for v in value]
    return "## Efficiency\n\nMeasured by `bench/efficiency.py`:\n\n" + body + (
        "\n" + "\n".join(lines) + "\n" if lines else "")


def _usage(info: dict, example: dict, args) -> str:
    model_id = info["model_id"]
    modality = info["modalities"][0]
    sample = (f"# a held-out {example['split']} sample; the user's next item was {example['target']!r}"
              if example.get("split") else "# any item ids of item_table.jsonl, oldest first")
    if info["format"] == "adapter":
        load = f"""import json

from peft import PeftModel
from transformers import set_seed
from transformers.utils import cached_file

from modeling_speeder.backbones import build_speeder_model  # from the Speeder repository

# The adapter goes on the Speeder base model that speeder_base.json describes (same seed: same base weights).
note = json.load(open(cached_file("{model_id}", "speeder_base.json")))
set_seed(note["seed"])
base, tokenizer = build_speeder_model(note["backbone"], **note["speeder_config"])
model = PeftModel.from_pretrained(base, "{model_id}").eval()
model.load_item_cache("{model_id}")"""
        tokenizer = ", tokenizer=tokenizer"
    else:
        load = f"""from transformers import AutoModel, AutoProcessor, pipeline

model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model_id}", trust_remote_code=True).with_items(model.item_cache)"""
        tokenizer = ""
    before = _processor_usage(info) + ("" if info["format"] == "adapter" else _catalogue_usage(info))
    return f"""## Usage

```python
import torch
{load}

{sample}
history = {example['history']!r}
candidates = {example['candidates']!r}
{before}print(model.recommend(history, candidates, top_k=3{tokenizer}))  # [(item_id, score), ...], best first

# A new item, encoded from its features (from the same feature encoders as the training data), is ranked at once:
model.add_items(["new-item"], titles=["A new item"],
                {modality}_features=torch.randn(1, model.config.{modality}_feature_size))
print(model.recommend(history, ["new-item"] + candidates[:4]{tokenizer}))
```

`recommend` runs one forward pass; unknown item ids raise a `ValueError` naming them; a history longer than
{args.max_history} items keeps the most recent ones. `model.save_pretrained(folder)` writes the item cache with the
new items.
"""


def _processor_usage(info: dict) -> str:
    """The snippet lines that build the model inputs `recommend` scores with the folder's processor."""
    if info["format"] == "adapter":
        return ""
    return """# The inputs recommend scores: prompt token ids, positions, the distinct items' cached embeddings
inputs = processor(histories=[history], candidates=[candidates])
print(model.score_candidates(**inputs, num_candidates=len(candidates)))  # (1, len(candidates)) logits
"""


def _catalogue_usage(info: dict) -> str:
    """The snippet lines that recommend from the whole catalogue, with `recommend` and with the pipeline."""
    k = len(info["candidate_labels"])
    sasrec = ""
    if "sasrec" in info.get("retrievers", ()):
        sasrec = 'print(model.recommend(history, top_k=3, retriever="sasrec"))  # candidates from the SASRec model\n'
    return f"""# Without candidates: {k} items retrieved from the whole catalogue (cosine in the item cache, history left
# out), re-ranked in one forward pass
print(model.recommend(history, top_k=3))
{sasrec}# The same as a transformers pipeline: histories by item id or title; a list of histories runs batched
recommender = pipeline("sequential-recommendation", model="{info['model_id']}", trust_remote_code=True)
print(recommender(history, top_k=3))  # [{{"item_id": ..., "title": ..., "score": ...}}, ...]
"""


def _limitations(run, args, info: dict, split: str) -> str:
    notes = [
        f"It ranks at most {len(info['candidate_labels'])} candidates per call (one answer label each; without "
        "candidates, `recommend` retrieves that many from the whole catalogue and re-ranks them); scores are "
        "label logits, comparable within one call only.",
        f"It knows the {info['items']} items of its item table; other items need features from the same encoders "
        f"and modalities ({', '.join(info['modalities'])}) as its training data, passed to `add_items`.",
        f"Its history reads at most {args.max_history} items (the position table's rows).",
        f"The figures above are this run's own, on its {split} split; they say nothing about other data sets.",
    ]
    if info.get("items_without_features"):
        notes.append(f"{info['items_without_features']} items of the data set had no features of these modalities "
                     "and are not in the item cache.")
    if args.backbone == "tiny":
        notes.append("The backbone is the tiny random-init test Llama: this model demonstrates the pipeline; it is "
                     "not a useful recommender.")
    return "## Limitations\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def _citation() -> str:
    return f"## Citation\n\n```bibtex\n{CITATION}\n```\n"


__all__ = ["CITATION", "model_card"]
