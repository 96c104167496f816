"""Serving benchmark: recommendations per second of an exported Speeder folder on the CPU, per batch size (issue 19).

    python bench/serving.py                                        # a tiny folder it makes itself; seconds
    python bench/serving.py --model outputs/hub/speeder-ml100k-demo --out runs/serving     # the SmolLM2 export
    python bench/serving.py --backbone smollm2-135m-instruct       # no export at hand: an untrained SmolLM2 folder

The folder loads as a Hub user loads it (`AutoModel.from_pretrained(folder, trust_remote_code=True)`). A request is
one user's history (`--history-length` items drawn from the catalogue); each is served from the whole catalogue: K
items retrieved from the item cache (cosine to the mean history embedding; K = the model's candidate labels), then
re-ranked by Speeder in ONE forward pass over right-padded prompts, `--requests` of them `batch_size` at a time.
Item embeddings come from the folder's item cache (no item encoder runs). Two ways of serving, timed interleaved
(per batch size and repeat, each in turn, so a drifting load on a shared machine hits both alike):

* **recommend_batch**: `model.recommend_batch(histories, batch_size=B)`, what the pipeline and the app call: the
  instruction every prompt starts with runs once per batch, its keys and values repeated over the rows;
* **without_shared_prefix**: the same retrieval, then the same prompts scored with every token of every prompt in
  the pass (`score_candidates` without `group_size`), as `recommend_batch` did before it shared the instruction.
  Its scores are checked against recommend_batch's (`prefix_check`).

Without `--model`, the folder is made here by `save_pretrained` (model, tokenizer, item cache): the `--backbone`
(default the tiny test Llama; `smollm2-135m-instruct` gives the demo's sizes, untrained: weights do not change the
cost) with `--items` items of random features. Torch runs `--threads` (default 1) CPU threads. Per batch size a
warm-up batch, then `--repeats` timed runs of `--requests` requests (whole batches); medians. Writes `serving.json`
(`rows`, `table`, `prefix_check`, model and machine info) and `serving.png` (recommendations per second against the
batch size) under `--out`.
"""

if __name__ == "__main__" and __package__ in (None, ""):  # `python bench/serving.py`: make the repo importable
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from bench.efficiency import machine_info
from modeling_speeder.backbones import build_speeder_model
from modeling_speeder.file_utils import write_json_atomically

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

METHODS = ("recommend_batch", "without_shared_prefix")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# Sizes of the folder made without --model: the tiny backbone's test sizes, or the demo config's (configs/demo.yaml).
FOLDER_SIZES = {
    "tiny": dict(text_feature_size=12, id_feature_size=8, fusion_hidden_size=32, fusion_num_attention_heads=4,
                 fusion_intermediate_size=64, max_history_length=10, modalities=["text", "id"]),
    "smollm2-135m-instruct": dict(text_feature_size=384, id_feature_size=64, fusion_hidden_size=256,
                                  fusion_num_attention_heads=4, fusion_intermediate_size=1024, max_history_length=10,
                                  modalities=["text", "id"]),
}
DEFAULT_ITEMS = {"tiny": 200, "smollm2-135m-instruct": 1682}  # MovieLens-100K's catalogue


@torch.no_grad()
def scores_without_shared_prefix(model, tokenizer, histories: list[list[str]],
                                 candidate_lists: list[list[str]]) -> torch.Tensor:
    """`(batch, K)` candidate scores with every token of every prompt in the pass: `recommend_batch`'s prompts and
    scores without its shared instruction prefix."""
    inputs = model.get_processor(tokenizer)(histories=histories, candidates=candidate_lists).to(model.device)
    inputs["item_embeddings"] = inputs["item_embeddings"].to(model.dtype)
    return model.score_candidates(**inputs, num_candidates=max(len(c) for c in candidate_lists)).float().cpu()


def shared_prefix_tokens(model, tokenizer, histories: list[list[str]]) -> int:
    """Tokens `recommend_batch` runs once for a batch of `histories` (the first of its two backbone calls)."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        model.recommend_batch(histories, tokenizer=tokenizer)
    finally:
        hook.remove()
    return seen[0] if len(seen) == 2 else 0


def make_folder(backbone: str, num_items: int, folder: Path, seed: int = 0) -> Path:
    """A servable Speeder folder (model, tokenizer, item cache of `num_items` random-feature items) at `folder`."""
    torch.manual_seed(seed)
    model, tokenizer = build_speeder_model(backbone, **FOLDER_SIZES.get(backbone, FOLDER_SIZES["tiny"]))
    generator = torch.Generator().manual_seed(seed)
    features = {f"{m}_features": torch.randn(num_items, model.config.feature_size(m), generator=generator)
                for m in model.config.modalities}
    model.add_items([f"item{i}" for i in range(num_items)], titles=[f"item {i}" for i in range(num_items)],
                    **features)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_requests(item_ids: list[str], count: int, length: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(item_ids, length) for _ in range(count)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_shared_prefix(model, tokenizer, histories: list[list[str]]) -> dict:
    """`recommend_batch`'s scores (shared instruction prefix) against the same prompts' without it."""
    candidates = model.retrieve(histories)
    shared = model.recommend_batch(histories, candidates, tokenizer=tokenizer)
    plain = scores_without_shared_prefix(model, tokenizer, histories, candidates)
    diffs, same = [], True
    for pool, ranking, row in zip(candidates, shared, plain):
        row = row[: len(pool)].tolist()
        diffs += [abs(row[pool.index(item)] - score) for item, score in ranking]
        same &= [item for item, _ in ranking] == [pool[i] for i in sorted(range(len(pool)), key=lambda i: -row[i])]
    return {"requests": len(histories), "max_abs_score_diff": max(diffs), "same_rankings": same}


def run(args, log=print) -> dict:
    """Loads the folder and measures every (method, batch size); returns the report's measurements."""
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    load_kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True, dtype=dtype, **load_kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    cache = model.item_cache
    length = min(args.history_length, model.config.max_history_length, len(cache) - 1)
    counts = {size: size * -(-args.requests // size) for size in args.batch_sizes}  # whole batches, >= --requests
    requests = make_requests(cache.item_ids, max(counts.values()), length, args.seed)
    prefix_tokens = shared_prefix_tokens(model, tokenizer, requests[:2])
    check = check_shared_prefix(model, tokenizer, requests[: min(8, len(requests))])
    log(f"shared prefix: {prefix_tokens} tokens; recommend_batch vs without it: max |score diff| "
        f"{check['max_abs_score_diff']:.2e}, same rankings: {check['same_rankings']}")

    def serve(method: str, batch_size: int, count: int):
        for start in range(0, count, batch_size):
            chunk = requests[start: start + batch_size]
            if method == "recommend_batch":
                model.recommend_batch(chunk, batch_size=batch_size, tokenizer=tokenizer)
            else:
                scores_without_shared_prefix(model, tokenizer, chunk, model.retrieve(chunk))

    times = {(method, size): [] for method in METHODS for size in args.batch_sizes}
    with torch.inference_mode():
        for size in args.batch_sizes:
            for _ in range(args.warmup):
                for method in METHODS:
                    serve(method, size, size)  # one batch
            for _ in range(args.repeats):
                for method in METHODS:
                    times[method, size].append(timed(lambda: serve(method, size, counts[size])))
            log(f"batch {size:>3}: " + ", ".join(
                f"{method} {counts[size] / statistics.median(times[method, size]):.1f} recs/s" for method in METHODS))
        retrieval = statistics.median(timed(lambda: model.retrieve(requests)) for _ in range(args.repeats))
    prompt = model.prompt_builder(tokenizer).recommendation(length, len(model.config.candidate_labels))
    rows = []
    for (method, size), seconds in times.items():
        median = statistics.median(seconds)
        rows.append({"method": method, "batch_size": size, "requests": counts[size],
                     "recs_per_s": counts[size] / median, "ms_per_rec": 1e3 * median / counts[size],
                     "ms_per_batch": 1e3 * median / (counts[size] // size), "seconds": seconds})
    text = model.config.text_config
    return {
        "rows": rows, "prefix_check": check,
        "retrieval_ms_per_rec": 1e3 * retrieval / len(requests),
        "model": {"folder": str(args.model), "backbone": text.model_type, "hidden_size": text.hidden_size,
                  "layers": text.num_hidden_layers, "parameters": sum(p.numel() for p in model.parameters()),
                  "dtype": str(model.dtype), "attn_implementation": model.config._attn_implementation,
                  "items": len(cache), "candidates_per_request": len(model.config.candidate_labels),
                  "history_length": length, "prompt_tokens": len(prompt.input_ids),
                  "prefix_tokens": prefix_tokens},
    }


def markdown_table(rows: list[dict]) -> str:
    sizes = sorted({row["batch_size"] for row in rows})
    value = {(row["method"], row["batch_size"]): row for row in rows}
    lines = ["| batch size | " + " | ".join(f"{m} recs/s | {m} ms/batch" for m in METHODS) + " | shared prefix gain |",
             "| ---: |" + " ---: | ---: |" * len(METHODS) + " ---: |"]
    for size in sizes:
        cells = [f"{value[m, size]['recs_per_s']:.1f} | {value[m, size]['ms_per_batch']:.1f}" for m in METHODS]
        gain = value["recommend_batch", size]["recs_per_s"] / value["without_shared_prefix", size]["recs_per_s"]
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {gain:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, marker in zip(METHODS, ("o", "s")):
        points = sorted((row["batch_size"], row["recs_per_s"]) for row in rows if row["method"] == method)
        ax.plot(*zip(*points), marker=marker, label=method)
    sizes = sorted({row["batch_size"] for row in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_xlabel("batch size (requests per forward pass)")
    ax.set_ylabel("recommendations per second")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_batch_sizes(text: str) -> list[int]:
    sizes = [int(part) for part in str(text).split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes takes positive integers like 1,2,4, got {text!r}.")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/serving.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported Speeder folder (default: one made here, see --backbone)")
    parser.add_argument("--backbone", default="tiny", help="without --model: the folder's backbone (default: tiny)")
    parser.add_argument("--items", type=int, help="without --model: catalogue size (default: 200, SmolLM2 1682)")
    parser.add_argument("--batch-sizes", type=parse_batch_sizes, default=list(DEFAULT_BATCH_SIZES),
                        help="comma-separated (default: 1,2,4,8,16,32)")
    parser.add_argument("--requests", type=int, default=32,
                        help="requests served per timed run, rounded up to whole batches (default: 32)")
    parser.add_argument("--history-length", type=int, default=10, help="items per history (default: 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians (default: 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed batches per method before each batch size's timed runs (default: 1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attn-implementation", help="the backbone's attention kernel (default: the folder's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; on a shared, busy machine more can run 10x slower); 0 = "
                             "torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/serving", help="folder for serving.json / serving.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        made = args.model is None
        if made:
            items = args.items or DEFAULT_ITEMS.get(args.backbone, 200)
            args.model = str(make_folder(args.backbone, items, Path(scratch) / "model", args.seed))
            print(f"Made a {args.backbone} Speeder folder with {items} items (untrained: the cost is the same).")
        print(f"Serving benchmark: {args.model}, batch sizes {args.batch_sizes}, {args.requests} requests, "
              f"{args.repeats} repeats", flush=True)
        threads = torch.get_num_threads()
        try:
            result = run(args, log=lambda line: print(line, flush=True))
        finally:
            torch.set_num_threads(threads)  # the caller's (a test session's) setting
        if made:
            result["model"]["folder"] = f"made here: {args.backbone}, {result['model']['items']} items, untrained"
    machine = machine_info("cpu")
    if args.threads:
        machine["torch_threads"] = args.threads
    machine["load_average_start"] = load_start
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown_table(result["rows"])
    report = {
        "benchmark": "speeder-serving",
        "config": {key: value for key, value in vars(args).items() if key != "model"},
        "model": result["model"],
        "machine": machine,
        "rows": result["rows"],
        "table": table,
        "prefix_check": result["prefix_check"],
        "retrieval_ms_per_rec": result["retrieval_ms_per_rec"],
        "notes": [
            "A request: one history; K items retrieved from the item cache (cosine to the mean history embedding), "
            "re-ranked by Speeder in one forward pass; item embeddings from the cache, no item encoder.",
            "recs/s = requests / median seconds to serve them batch_size at a time (requests: --requests rounded up "
            "to whole batches); ms/batch = median seconds / number of batches.",
            "recommend_batch runs the instruction every prompt starts with once per batch (prefix_tokens), its keys "
            "and values repeated over the rows; without_shared_prefix runs every token of every prompt; "
            "prefix_check compares their scores.",
            "Timed runs interleave the methods per batch size and repeat; read the load averages (shared machines).",
        ],
        "wall_s": time.perf_counter() - started,
    }
    write_json_atomically(out / "serving.json", report)
    model = result["model"]
    plot(result["rows"], out / "serving.png",
         f"{model['backbone']} ({model['layers']} layers, d={model['hidden_size']}) · {model['items']} items · "
         f"history {model['history_length']} · K={model['candidates_per_request']} · cpu, "
         f"{machine['torch_threads']} thread(s)")
    print()
    print(table)
    print(f"Prompt {model['prompt_tokens']} tokens, shared prefix {model['prefix_tokens']}; retrieval "
          f"{report['retrieval_ms_per_rec']:.2f} ms/rec. Load average start {load_start}, end "
          f"{machine['load_average_end']}. Wall {report['wall_s']:.0f} s. Wrote {out / 'serving.json'} and "
          f"{out / 'serving.png'}")
    return report


if __name__ == "__main__":
    main()
