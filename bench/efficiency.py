"""Efficiency benchmark: Speeder vs LLaRA-style and TMF-style prompts on the same backbone (issues 6, 18; Fig. 8).

    python -m bench.efficiency --backbone smollm2-135m-instruct --out runs/efficiency        # CPU default, long
    python -m bench.efficiency --backbone smollm2-135m-instruct --lengths 20 --threads 1     # ~7 min on 2 cores
    python -m bench.efficiency --backbone tiny --lengths 5,10 --repeats 1 --out /tmp/eff      # seconds
    python -m bench.efficiency --backbone /path/to/Llama-2-7b-hf --device cuda --dtype bfloat16 --batch-size 16

One backbone, one tokenizer, the same samples (real MovieLens-100K user histories and titles from the recbole
wheel) at every history length n (`--lengths`, default 5, 10, 20, 50, 100), four prompt builders:

* **speeder**: `SpeederProcessor` (prompt style `speeder`), the paper's prompt: index + one `<item>` per history item, label + `<item>`
  per candidate; one answer token; the candidates are ranked from the label logits of ONE forward pass
  (`score_candidates`);
* **speeder_1tok**: the same model and processor with `history_indices=False`: one `<item>` per history item, the
  order carried by PPL alone;
* **llara**: `SpeederProcessor(prompt_style="llara")`: each item as its title then one ID-embedding `<item>` token; the
  answer is GENERATED as the chosen title (then EOS);
* **tmf**: `SpeederProcessor(prompt_style="tmf")`: title then an image and an ID `<item>` token; answer generated.

The baselines run once per title setting (`--title-tokens`, default `real,20`: the real titles, then every title
cycled / truncated to the paper's ~20 tokens); Speeder's prompts hold no titles. All go through the same
`SpeederForSequentialRec` and its `item_embeddings=` splice, so only the prompt (and the answer) differ. For every
history length n (m = 5 candidates), per sample:

* prompt tokens (exact), tokens per item, answer tokens;
* training step time: forward + backward + AdamW step at a fixed batch (`--batch-size`), LoRA (peft) on
  `q_proj,v_proj`, loss on the answer tokens only (Speeder 1 token; LLaRA/TMF the title tokens + EOS). Speeder's
  step also runs its trainable MRC item encoder (MoME + adapters) on cached frozen-encoder features; the baselines
  get cached item embeddings (their small projectors are left out: this favours them);
* inference time to a final answer (`--infer-batch-size`, default 1 = latency): Speeder scores the pool in one
  pass; the baselines generate a fixed `len(title tokens) + 1` (EOS) tokens with greedy decoding
  (`min_new_tokens = max_new_tokens`), so the cost is deterministic, then match the text to a candidate;
* peak memory of each (prompt, n) phase above the memory held before it, over its warm-up run(s):
  `torch.cuda.max_memory_allocated` on CUDA; on CPU the process's peak RSS (VmHWM, reset per phase through
  /proc/self/clear_refs) in a fresh subprocess whose glibc mmap threshold is fixed so freed tensors return to the OS.

Warm-up runs, `--repeats` timed runs, medians. One model serves every builder and the timed runs are interleaved
(per n and repeat: every prompt in turn), so a load that drifts during the run (shared machines) hits every prompt
alike; still, run it on a quiet machine and read the recorded load averages. The item encoders are out of the timed
loops (features and item embeddings cached, random but fixed); the one-off cost of `encode_items` over the whole
catalogue is reported apart, plus the frozen encoders' feature-extraction seconds when `--data-dir` points at a
built DATA_DIR with features.

Each (baseline, title setting, n) is compared with each Speeder prompt (`comparisons`): time ratios baseline /
Speeder and the bounds that the MEASURED token counts allow, with d the backbone's hidden size:

* training: paper Eq. 3 (App. C), `C ∝ N²·d + N·d²` with N the training sequence length (prompt + answer);
* inference: `(N_b + t_b) / (N_s + 1)`, the tokens each reads and writes to a final answer (prompt + generated
  answer; Speeder's answer is one token), which charges Speeder for reading its own prompt. Paper Eq. 4
  `t_out·(N·d + d²)` is kept as `infer_ideal_eq4`: it charges only the decoded tokens, so it overstates what one
  scoring pass can gain.

* both, on this backbone (`*_bound_backbone`): the decoder layers' multiply-accumulates over the same tokens
  (`backbone_macs`: projections, gated MLP, attention over the full square as eager attention computes it; cached
  decode steps for generation). Eq. 3 weighs attention (`N²·d`) as much as the projections (`N·d²`); in a real
  decoder layer the projections and MLP cost ~10x more per token, so Eq. 3 overstates what fewer tokens can buy.

measured / bound is the fraction of the prompt's token saving that becomes time. Also recorded (`profile`): the
top ops by self CPU time of one Speeder training step and one inference call (torch.profiler), and the rows the
item encoder encodes in that training step against the distinct items of its batch. Writes `efficiency.json`
(`rows`, `comparisons`, `table`, `targets`, `profile`, machine info) and `efficiency.png` (time per sample vs n,
training and inference panels) under `--out`.
"""

if __name__ == "__main__" and __package__ in (None, ""):  # `python bench/efficiency.py`: make the repo importable
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))

import argparse
import csv
import gc
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from modeling_speeder import SpeederProcessor
from modeling_speeder.backbones import build_speeder_model, resolve_backbone
from modeling_speeder.file_utils import write_json_atomically
from modeling_speeder.processing_speeder import distinct_rows
from modeling_speeder.prompt_speeder import CANDIDATE_ITEM_TEMPLATE

METHODS = ("speeder", "speeder_1tok", "llara", "tmf")
SPEEDER_METHODS = ("speeder", "speeder_1tok")
METHOD_NAMES = {"speeder": "Speeder", "speeder_1tok": "Speeder, 1 token/history item", "llara": "LLaRA-style",
                "tmf": "TMF-style"}
DEFAULT_LENGTHS = (5, 10, 20, 50, 100)
REAL_TITLES = "real"
PAPER_TITLE_TOKENS = 20  # the paper's ~20 tokens per title
DEFAULT_TITLE_TOKENS = f"{REAL_TITLES},{PAPER_TITLE_TOKENS}"
# Issue 18's bar, against the LLaRA-style prompt at n = 20 with paper-length titles.
TARGETS = {"train_speedup_n20": 10.0, "infer_speedup_n20": 20.0, "fraction_of_bound_n20": 0.8}
PROFILE_LENGTH = 20  # history length of the profiled step and call (the nearest measured one)
PROFILE_TOP_OPS = 10
# glibc: serve every allocation >= 128 KiB by mmap and give it back on free, so RSS follows the live tensors.
CPU_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
# The profiler's own log (kineto) otherwise prints an ERROR line on machines without a GPU; the caller's value wins.
QUIET_PROFILER_ENV = {"KINETO_LOG_LEVEL": "5"}


# ----------------------------------------------------------------------------------------------------------- data
def movielens_dir() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The MovieLens-100K titles come from the recbole wheel: pip install --no-deps recbole==1.2.1"
        )
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """A RecBole atomic file: tab-separated, header `name:type`; returns (field names, rows)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        return header, [row for row in reader if row]


def load_movielens(folder: Path | None = None) -> tuple[list[str], list[list[int]]]:
    """`(titles by item index, chronological item-index sequences of every user)` of MovieLens-100K."""
    folder = Path(folder) if folder else movielens_dir()
    header, rows = _read_atomic(folder / "ml-100k.item")
    item_col, title_col = header.index("item_id"), header.index("movie_title")
    index = {row[item_col]: k for k, row in enumerate(rows)}
    titles = [row[title_col].strip() for row in rows]
    header, rows = _read_atomic(folder / "ml-100k.inter")
    user_col, item_col, time_col = header.index("user_id"), header.index("item_id"), header.index("timestamp")
    by_user: dict[str, list[tuple[float, int, int]]] = {}
    for order, row in enumerate(rows):
        if row[item_col] in index:
            by_user.setdefault(row[user_col], []).append((float(row[time_col]), order, index[row[item_col]]))
    sequences = [[item for _, _, item in sorted(events)] for _, events in sorted(by_user.items())]
    return titles, sequences


def make_samples(sequences, num_items: int, n: int, m: int, count: int, seed: int) -> list[dict]:
    """`count` samples with n history items: users' last n+1 interactions (target last) and a pool of m candidates
    (target + m-1 items the user never interacted with), seeded; the same for every method."""
    rng = random.Random(seed * 1_000_003 + n)
    eligible = [s for s in sequences if len(s) >= n + 1]
    if len(eligible) < count:
        raise ValueError(f"Only {len(eligible)} users have {n + 1} interactions; {count} samples were asked for.")
    samples = []
    for seq in rng.sample(eligible, count):
        history, target = seq[-(n + 1):-1], seq[-1]
        seen = set(seq)
        negatives = []
        while len(negatives) < m - 1:
            item = rng.randrange(num_items)
            if item not in seen and item not in negatives:
                negatives.append(item)
        candidates = negatives + [target]
        rng.shuffle(candidates)
        samples.append({"history": history, "candidates": candidates, "label": candidates.index(target)})
    return samples


# -------------------------------------------------------------------------------------------------------- prompts
def speeder_item_tokens(builder, n: int, m: int) -> int:
    """Tokens of Speeder's item segments ("1<item>" or "<item>", " A<item>", ...), each tokenized alone as the
    builder writes it: index text (if any) + placeholder (+ any space token the tokenizer keeps before `<item>`)."""
    def count(text):
        return len(builder.tokenizer(text, add_special_tokens=False).input_ids)

    return (sum(count(builder.history_item_text(k)) for k in range(1, n + 1))
            + sum(count(CANDIDATE_ITEM_TEMPLATE.format(label=label)) for label in builder.candidate_labels[:m]))


def encode_sample(method: str, builder, sample: dict, titles: list[str]) -> dict:
    """Token ids (prompt + answer), the placeholder order (item id and modality per `<item>`) and token counts."""
    items = sample["history"] + sample["candidates"]
    n, m = len(sample["history"]), len(sample["candidates"])
    if method in SPEEDER_METHODS:
        prompt = builder.recommendation(n, m, answer=sample["label"])
        prompt_length = len(prompt.input_ids) - 1
        item_ids, modalities = items, ["mm"] * len(items)
        non_item = prompt_length - speeder_item_tokens(builder, n, m)
    else:
        prompt = builder.recommendation([titles[i] for i in sample["history"]],
                                        [titles[i] for i in sample["candidates"]], answer=sample["label"])
        prompt_length = prompt.prompt_length
        item_ids = [items[slot] for slot in prompt.item_slots]
        modalities = list(prompt.item_modalities)
        non_item = prompt_length - sum(prompt.title_token_counts) - prompt.num_items
    return {
        "prompt": prompt,
        "input_ids": list(prompt.input_ids),
        "prompt_length": prompt_length,
        "answer_length": len(prompt.input_ids) - prompt_length,
        "history_positions": list(prompt.history_positions),
        "item_ids": item_ids,
        "modalities": modalities,
        "tokens_per_item": (prompt_length - non_item) / (n + m),
        "non_item_tokens": non_item,
        "candidates": [titles[i] for i in sample["candidates"]],
    }


def prompt_variants(methods, title_settings) -> list[tuple[str, object]]:
    """`(method, titles)` of every prompt measured: Speeder's without titles (None), each baseline per title setting
    (`"real"` or tokens per title)."""
    return ([(m, None) for m in methods if m in SPEEDER_METHODS]
            + [(m, t) for t in title_settings for m in methods if m not in SPEEDER_METHODS])


def variant_name(method: str, titles) -> str:
    if titles is None:
        return METHOD_NAMES[method]
    return f"{METHOD_NAMES[method]} ({'real titles' if titles == REAL_TITLES else f'{titles}-token titles'})"


def collate(records: list[dict], processor, with_answer: bool, padding_side: str, torch):
    """The processor's padded `input_ids`, `attention_mask`, `labels` (answer tokens only; None without the answer)
    and flat placeholder-order item lists."""
    batch = processor.pad([r["prompt"] for r in records], padding_side, with_answer)
    item_ids = [i for r in records for i in r["item_ids"]]
    modalities = [mod for r in records for mod in r["modalities"]]
    positions = torch.tensor([p for r in records for p in r["history_positions"]], dtype=torch.long)
    return batch["input_ids"], batch["attention_mask"], batch.get("labels"), item_ids, modalities, positions


# --------------------------------------------------------------------------------------------------- measurement
class PeakMemory:
    """Peak memory of a phase above what was held when it started, in MiB (CUDA allocator, or process RSS)."""

    def __init__(self, device, torch):
        self.device, self.torch = device, torch
        self.method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else None
        if self.method is None:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "VmHWM (peak RSS, reset per phase)"
            except OSError:
                self.method = "ru_maxrss delta (not resettable: later phases read as 0 when below earlier peaks)"

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def start(self):
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        elif self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status_kib("VmRSS") * 1024
        else:
            import resource

            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> float:
        if self.device.type == "cuda":
            peak = self.torch.cuda.max_memory_allocated()
        elif self.method.startswith("VmHWM"):
            peak = self._status_kib("VmHWM") * 1024
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0.0, (peak - self.base) / 2**20)


def timed(fn, device, torch) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def profile_top_ops(fn, device, torch, top: int = PROFILE_TOP_OPS) -> dict:
    """torch.profiler over one call of `fn`: its `top` ops by self CPU time (ms, share of the total, calls)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = []
    for event in events[:top]:
        op = {"op": event.key, "calls": event.count, "self_cpu_ms": event.self_cpu_time_total / 1e3,
              "self_cpu_share": event.self_cpu_time_total / total, "cpu_total_ms": event.cpu_time_total / 1e3}
        if device.type == "cuda":
            op["self_device_ms"] = getattr(event, "self_device_time_total", 0.0) / 1e3
        ops.append(op)
    return {"self_cpu_ms_total": total / 1e3, "top_ops": ops}


def run_all(args, log=print) -> dict:
    """Measure every prompt at every history length on ONE model; returns `{"rows", "encoding", "profile",
    "memory_method", "model"}`.

    Timed runs are interleaved (for each n and repeat: every prompt in turn), so that a load that drifts over the
    minutes of a run (shared machines) hits every prompt alike and the ratios stay meaningful. Each (prompt, n) gets
    its own memory window around its warm-up runs."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft's `is_gradient_checkpointing` deprecation
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    titles, sequences = load_movielens()
    num_items = len(titles)
    model, tokenizer = build_speeder_model(args.backbone, dtype=dtype, max_history_length=max(args.lengths))
    model.to(device).eval()
    d = model.config.hidden_size
    variants = prompt_variants(args.methods, args.title_tokens)
    processors = {}
    for method, setting in variants:
        if method == "speeder":  # the config's default: the paper's prompt
            processors[method, setting] = SpeederProcessor.from_model_config(model.config, tokenizer)
        elif method == "speeder_1tok":  # the same model, one token per history item
            processors[method, setting] = SpeederProcessor.from_model_config(model.config, tokenizer,
                                                                             history_indices=False)
        else:
            processors[method, setting] = SpeederProcessor(
                tokenizer, max_history_length=max(args.lengths), prompt_style=method,
                title_tokens=None if setting == REAL_TITLES else setting)
    builders = {variant: processor.prompt_builder for variant, processor in processors.items()}
    pad_id = tokenizer.pad_token_id
    item_token_id = model.config.item_token_id

    # Cached item inputs, random but fixed: frozen-encoder features (Speeder's MRC trains on them) and the baselines'
    # ID / image embeddings, scaled like the backbone's token embeddings.
    generator = torch.Generator().manual_seed(args.seed)
    features = {m: torch.randn(num_items, model.config.feature_size(m), generator=generator).to(device, dtype)
                for m in model.config.modalities}
    scale = float(model.get_input_embeddings().weight.detach().float().std())
    tables = {m: (torch.randn(num_items, d, generator=generator) * scale).to(device, dtype) for m in ("id", "vision")}

    # The one-off cost: Speeder's MRC over the whole catalogue, which fills its inference cache.
    @torch.no_grad()
    def encode_all():
        return torch.cat([model.encode_items(**{f"{m}_features": f[i:i + 512] for m, f in features.items()})
                          for i in range(0, num_items, 512)])

    encode_all()  # warm-up
    seconds = timed(encode_all, device, torch)
    tables["mm"] = encode_all()
    encoding = {"items": num_items, "encode_items_s": seconds, "encode_items_ms_per_item": 1e3 * seconds / num_items}

    def item_inputs(method, item_ids, modalities, positions, train: bool) -> dict:
        if method in SPEEDER_METHODS and train:  # the MRC item encoder runs (and trains) inside Speeder's step
            distinct, item_rows = distinct_rows(item_ids)  # each distinct item encoded once
            ids = torch.tensor(distinct, device=device)
            return {**{f"{m}_features": f[ids] for m, f in features.items()},
                    "modality_mask": torch.ones(len(distinct), 3, dtype=torch.bool, device=device),
                    "item_rows": item_rows.to(device), "history_positions": positions.to(device)}
        rows = torch.stack([tables[mod][i] for mod, i in zip(modalities, item_ids)])
        return {"item_embeddings": rows, "history_positions": positions.to(device)}

    memory = PeakMemory(device, torch)
    samples_per_length = max(args.batch_size, args.infer_samples)
    records, rows = {}, {}
    for n in args.lengths:
        samples = make_samples(sequences, num_items, n, args.candidates, samples_per_length, args.seed)
        for method, setting in variants:
            recs = records[method, setting, n] = [encode_sample(method, builders[method, setting], s, titles)
                                                  for s in samples]
            # Token counts of exactly the samples timed: inference prompts, training sequences (prompt + answer).
            timed_infer, timed_train = recs[: args.infer_samples], recs[: args.batch_size]
            prompt_tokens = [r["prompt_length"] for r in timed_infer]
            answers = [r["answer_length"] for r in timed_infer]
            rows[method, setting, n] = {
                "method": method, "titles": setting, "n": n, "m": args.candidates,
                "prompt_tokens": statistics.mean(prompt_tokens), "prompt_tokens_min": min(prompt_tokens),
                "prompt_tokens_max": max(prompt_tokens),
                "tokens_per_item": statistics.mean(r["tokens_per_item"] for r in timed_infer),
                "non_item_tokens": statistics.mean(r["non_item_tokens"] for r in timed_infer),
                "answer_tokens": statistics.mean(answers),
                "generated_tokens": 1 if method in SPEEDER_METHODS else statistics.mean(answers),
                "train_sequence_tokens": statistics.mean(r["prompt_length"] + r["answer_length"] for r in timed_train),
            }
            if method in SPEEDER_METHODS:  # items in one training step: placeholders, and distinct among them
                step_items = [i for r in timed_train for i in r["item_ids"]]
                rows[method, setting, n]["train_items_per_step"] = len(step_items)
                rows[method, setting, n]["train_distinct_items_per_step"] = len(set(step_items))

    profile_n = min(args.lengths, key=lambda n: (abs(n - PROFILE_LENGTH), n))
    profiled = next((v for v in variants if v[0] in SPEEDER_METHODS), None)
    profile = None if profiled is None else {"prompt": profiled[0], "n": profile_n, "batch_size": args.batch_size,
                                             "infer_batch_size": args.infer_batch_size}

    # Inference: the plain model (a deployed LoRA is merged), `--infer-batch-size` prompts per call.
    def infer(variant, batch, input_ids, attention_mask, inputs):
        method = variant[0]
        if method in SPEEDER_METHODS:
            scores = model.score_candidates(input_ids, attention_mask, num_candidates=args.candidates, **inputs)
            return scores.argmax(-1).tolist()
        new_tokens = max(r["answer_length"] for r in batch)  # batched generate runs until the longest ends
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **inputs,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                suppress_tokens=[item_token_id], pad_token_id=pad_id,
                                eos_token_id=tokenizer.eos_token_id)
        generated = output[:, input_ids.shape[1]:].tolist()
        return [builders[variant].parse_answer(g, r["candidates"]) for g, r in zip(generated, batch)]

    for n in args.lengths:
        prepared = {}
        for variant in variants:
            recs = records[(*variant, n)][: args.infer_samples]
            prepared[variant] = []
            for i in range(0, len(recs), args.infer_batch_size):
                batch = recs[i:i + args.infer_batch_size]
                input_ids, attention_mask, _, item_ids, modalities, positions = collate(
                    batch, processors[variant], with_answer=False, padding_side="left", torch=torch)
                prepared[variant].append((variant, batch, input_ids.to(device), attention_mask.to(device),
                                          item_inputs(variant[0], item_ids, modalities, positions, train=False)))
            memory.start()
            for call in prepared[variant]:
                for _ in range(max(1, args.warmup)):  # at least one untimed run: it is the memory window
                    infer(*call)
            rows[(*variant, n)]["infer_peak_mib"] = memory.stop()
        per_sample = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for variant in variants:
                for call in prepared[variant]:
                    per_sample[variant].append(timed(lambda: infer(*call), device, torch) / len(call[1]))
        for variant in variants:
            rows[(*variant, n)]["infer_s_per_sample"] = statistics.median(per_sample[variant])
            rows[(*variant, n)]["infer_runs"] = len(per_sample[variant])
        if profile is not None and n == profile_n:
            profile["inference"] = profile_top_ops(lambda: infer(*prepared[profiled][0]), device, torch)
        log(f"  inference n={n:>3}: " + ", ".join(
            f"{variant_name(*v)} {1e3 * rows[(*v, n)]['infer_s_per_sample']:.1f} ms "
            f"({rows[(*v, n)]['prompt_tokens']:.0f} tok)" for v in variants))

    # Training: LoRA on the attention projections (+ the PPL table); Speeder also trains its item encoder, whose
    # parameters get no gradient (so no optimizer work) in the baselines' steps.
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(args.lora_targets),
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    base = peft_model.get_base_model().model
    for module in (base.history_position_embeddings, base.item_encoder):
        if module is not None:
            module.requires_grad_(True)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        peft_model(**batch).loss.backward()
        optimizer.step()

    for n in args.lengths:
        batches = {}
        for variant in variants:
            recs = records[(*variant, n)][: args.batch_size]
            input_ids, attention_mask, labels, item_ids, modalities, positions = collate(
                recs, processors[variant], with_answer=True, padding_side="right", torch=torch)
            batches[variant] = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
                                "labels": labels.to(device),
                                **item_inputs(variant[0], item_ids, modalities, positions, train=True)}
            rows[(*variant, n)]["train_batch_tokens"] = int(input_ids.numel())
            memory.start()
            for _ in range(max(1, args.warmup)):
                step(batches[variant])
            rows[(*variant, n)]["train_peak_mib"] = memory.stop()
        times = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for variant in variants:
                times[variant].append(timed(lambda: step(batches[variant]), device, torch))
        for variant in variants:
            rows[(*variant, n)]["train_step_s"] = statistics.median(times[variant])
            rows[(*variant, n)]["train_s_per_sample"] = rows[(*variant, n)]["train_step_s"] / args.batch_size
        if profile is not None and n == profile_n:
            encoded = []  # rows the item encoder encodes in the profiled step (one entry per encoder call)
            hook = base.item_encoder.register_forward_hook(lambda module, inputs, output: encoded.append(len(output)))
            try:
                profile["train_step"] = profile_top_ops(lambda: step(batches[profiled]), device, torch)
            finally:
                hook.remove()
            row = rows[(*profiled, n)]
            profile["item_encoding"] = {
                "placeholders": row["train_items_per_step"], "distinct_items": row["train_distinct_items_per_step"],
                "encoded_rows": sum(encoded), "encoder_calls": len(encoded),
                "once_per_distinct_item": sum(encoded) == row["train_distinct_items_per_step"],
            }
        log(f"  training  n={n:>3}: " + ", ".join(
            f"{variant_name(*v)} {rows[(*v, n)]['train_s_per_sample']:.3f} s/sample" for v in variants))

    text_config = model.config.text_config
    info = {"hidden_size": d, "num_layers": text_config.num_hidden_layers,
            "intermediate_size": text_config.intermediate_size,
            "num_attention_heads": text_config.num_attention_heads,
            "num_key_value_heads": getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads,
            "parameters": sum(p.numel() for p in model.parameters())}
    return {"rows": [rows[(*v, n)] for v in variants for n in args.lengths], "encoding": encoding,
            "profile": profile, "memory_method": memory.method, "model": info}


# ----------------------------------------------------------------------------------------------------- analysis
def eq3(tokens: float, d: int) -> float:
    """Paper Eq. 3 per sample (T, B, L cancel in a ratio): N²·d + N·d²."""
    return tokens * tokens * d + tokens * d * d


def eq4(tokens: float, t_out: float, d: int) -> float:
    """Paper Eq. 4 per sample (L cancels): t_out·(N·d + d²)."""
    return t_out * (tokens * d + d * d)


def prefill_decode(tokens: float, t_out: float, d: int) -> float:
    """Our fuller inference model (not the paper's): one prefill pass (Eq. 3 form) + t_out - 1 cached decode steps."""
    steps = max(0, round(t_out) - 1)
    return eq3(tokens, d) + sum((tokens + k) * d + d * d for k in range(steps))


def backbone_macs(tokens: float, model: dict, context: float | None = None) -> float:
    """Multiply-accumulates of the backbone's decoder layers over `tokens` tokens that each attend to `context`
    positions (default: `tokens`, as eager attention computes the full square): the q/k/v/o projections, the gated
    MLP, attention scores and values. `model` is the report's `model` record; the LM head, norms and the item
    encoder are left out."""
    d, heads, ffn = model["hidden_size"], model["num_attention_heads"], model["intermediate_size"]
    kv = model["num_key_value_heads"] * (d // heads)
    per_token = 2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * (tokens if context is None else context) * d
    return model["num_layers"] * tokens * per_token


def backbone_inference_macs(row: dict, model: dict) -> float:
    """`backbone_macs` of a row's inference: the prompt in one pass, then each generated token after the first as
    one cached decode step over the positions before it."""
    prompt, steps = row["prompt_tokens"], max(0, round(row["generated_tokens"]) - 1)
    return backbone_macs(prompt, model) + sum(backbone_macs(1, model, prompt + k + 1) for k in range(steps))


def answer_tokens_read_and_written(row: dict) -> float:
    """Tokens an inference reads and writes to a final answer: its prompt + the answer it generates (Speeder: 1)."""
    return row["prompt_tokens"] + row["generated_tokens"]


def compare(baseline: dict, speeder: dict, model: dict) -> dict:
    """Time ratios baseline / Speeder and the token-count bounds on them (see the module docstring); `model` is the
    report's `model` record (hidden size and layer shapes)."""
    d = model["hidden_size"]
    train_bound = eq3(baseline["train_sequence_tokens"], d) / eq3(speeder["train_sequence_tokens"], d)
    train_layers = (backbone_macs(baseline["train_sequence_tokens"], model)
                    / backbone_macs(speeder["train_sequence_tokens"], model))
    infer_layers = backbone_inference_macs(baseline, model) / backbone_inference_macs(speeder, model)
    infer_bound = answer_tokens_read_and_written(baseline) / answer_tokens_read_and_written(speeder)
    train = baseline["train_s_per_sample"] / speeder["train_s_per_sample"]
    infer = baseline["infer_s_per_sample"] / speeder["infer_s_per_sample"]
    eq4_ratio = (eq4(baseline["prompt_tokens"], baseline["generated_tokens"], d)
                 / eq4(speeder["prompt_tokens"], speeder["generated_tokens"], d))
    return {
        "titles": baseline["titles"], "n": baseline["n"], "baseline": baseline["method"], "speeder": speeder["method"],
        "baseline_prompt_tokens": baseline["prompt_tokens"], "speeder_prompt_tokens": speeder["prompt_tokens"],
        "train_speedup": train, "train_bound_eq3": train_bound, "train_fraction_of_bound": train / train_bound,
        "train_bound_backbone": train_layers, "train_fraction_of_backbone_bound": train / train_layers,
        "infer_speedup": infer, "infer_bound_tokens": infer_bound, "infer_fraction_of_bound": infer / infer_bound,
        "infer_bound_backbone": infer_layers, "infer_fraction_of_backbone_bound": infer / infer_layers,
        "infer_ideal_eq4": eq4_ratio, "infer_fraction_of_eq4": infer / eq4_ratio,
        "infer_ideal_prefill_decode": (prefill_decode(baseline["prompt_tokens"], baseline["generated_tokens"], d)
                                       / prefill_decode(speeder["prompt_tokens"], speeder["generated_tokens"], d)),
        "memory_ratio_train": (baseline["train_peak_mib"] / speeder["train_peak_mib"]
                               if speeder["train_peak_mib"] else None),
    }


def comparisons_of(rows: list[dict], model: dict) -> list[dict]:
    """One comparison per baseline row (title setting, n) and Speeder prompt measured at that n."""
    speeders = {(r["method"], r["n"]): r for r in rows if r["method"] in SPEEDER_METHODS}
    return [compare(r, speeders[s, r["n"]], model) for r in rows if r["method"] not in SPEEDER_METHODS
            for s in SPEEDER_METHODS if (s, r["n"]) in speeders]


def _titles_text(titles) -> str:
    return "-" if titles is None else ("real" if titles == REAL_TITLES else f"{titles} tok")


def _order(titles) -> tuple:
    return (0, 0) if titles is None else ((1, 0) if titles == REAL_TITLES else (2, titles))


def markdown_table(rows: list[dict], comparisons: list[dict], title_settings: str) -> str:
    """Two markdown tables: the measurements per prompt, then the ratios and bound fractions per comparison."""
    head = ("| prompt | titles | n | prompt tok | tok/item | answer tok | train s/sample | infer ms/sample | "
            "train MiB | infer MiB |")
    lines = [f"Titles: {title_settings}", "", head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in sorted(rows, key=lambda r: (r["n"], _order(r["titles"]), METHODS.index(r["method"]))):
        lines.append(
            f"| {METHOD_NAMES[r['method']]} | {_titles_text(r['titles'])} | {r['n']} | {r['prompt_tokens']:.1f} | "
            f"{r['tokens_per_item']:.2f} | {r['answer_tokens']:.1f} | {r['train_s_per_sample']:.4g} | "
            f"{1e3 * r['infer_s_per_sample']:.4g} | {r['train_peak_mib']:.0f} | {r['infer_peak_mib']:.0f} |"
        )
    if comparisons:
        head = ("| baseline | titles | n | vs | prompt tok | train × | bound (Eq. 3) | train / bound | "
                "bound (layers) | train / layers | infer × | bound (tokens) | infer / bound | bound (layers) | "
                "infer / layers | Eq. 4 |")
        lines += ["", "Ratios baseline / Speeder; bounds from the token counts (training: Eq. 3; inference: "
                  "(prompt + answer tokens) / (Speeder prompt + 1)) and from the backbone's decoder-layer "
                  "multiply-accumulates over those tokens (layers):", "", head,
                  "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
        for c in sorted(comparisons, key=lambda c: (c["n"], _order(c["titles"]), METHODS.index(c["baseline"]),
                                                    METHODS.index(c["speeder"]))):
            lines.append(
                f"| {METHOD_NAMES[c['baseline']]} | {_titles_text(c['titles'])} | {c['n']} | "
                f"{METHOD_NAMES[c['speeder']]} | "
                f"{c['baseline_prompt_tokens']:.0f} / {c['speeder_prompt_tokens']:.0f} | "
                f"{c['train_speedup']:.2f} | {c['train_bound_eq3']:.2f} | {c['train_fraction_of_bound']:.0%} | "
                f"{c['train_bound_backbone']:.2f} | {c['train_fraction_of_backbone_bound']:.0%} | "
                f"{c['infer_speedup']:.2f} | {c['infer_bound_tokens']:.2f} | {c['infer_fraction_of_bound']:.0%} | "
                f"{c['infer_bound_backbone']:.2f} | {c['infer_fraction_of_backbone_bound']:.0%} | "
                f"{c['infer_ideal_eq4']:.2f} |"
            )
    return "\n".join(lines)


def check_targets(comparisons: list[dict]) -> dict:
    """Issue 18's bar for each Speeder prompt measured: against the LLaRA-style prompt at n = 20 with titles of
    `PAPER_TITLE_TOKENS` tokens (value None when that was not measured)."""
    result = {}
    for speeder in sorted({c["speeder"] for c in comparisons}, key=METHODS.index):
        found = next((c for c in comparisons if c["speeder"] == speeder and c["baseline"] == "llara"
                      and c["n"] == 20 and c["titles"] == PAPER_TITLE_TOKENS), None)
        values = {"train_speedup_n20": None, "infer_speedup_n20": None, "fraction_of_bound_n20": None}
        if found:
            values = {"train_speedup_n20": found["train_speedup"], "infer_speedup_n20": found["infer_speedup"],
                      "fraction_of_bound_n20": min(found["train_fraction_of_bound"], found["infer_fraction_of_bound"])}
        result[speeder] = {
            name: {"target": TARGETS[name], "value": value, "met": None if value is None else value >= TARGETS[name]}
            for name, value in values.items()
        }
        result[speeder]["scope"] = (f"LLaRA-style at n = 20, titles of {PAPER_TITLE_TOKENS} tokens; fraction = the "
                                    "lower of training (Eq. 3) and inference (token) bound fractions")
    return result


def summary(comparisons: list[dict], targets: dict) -> dict:
    """Flat scalars for cards and reports: the n = 20 LLaRA-style ratios per Speeder prompt and title setting, and
    whether each target is met."""
    out = {}
    for c in comparisons:
        if c["baseline"] == "llara" and c["n"] == 20:
            titles = "real" if c["titles"] == REAL_TITLES else f"t{c['titles']}"
            key = f"{c['speeder']}_vs_llara_n20_{titles}"
            for field in ("train_speedup", "train_fraction_of_bound", "train_bound_backbone",
                          "train_fraction_of_backbone_bound", "infer_speedup", "infer_fraction_of_bound",
                          "infer_bound_backbone", "infer_fraction_of_backbone_bound"):
                out[f"{key}_{field}"] = round(c[field], 3)
    for speeder, checks in targets.items():
        for name, check in checks.items():
            if isinstance(check, dict):
                out[f"{speeder}_target_{name}_met"] = check["met"]
    return out


def plot(rows: list[dict], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    variants = sorted({(r["method"], r["titles"]) for r in rows},
                      key=lambda v: (_order(v[1]), METHODS.index(v[0])))
    markers = ("o", "s", "^", "v", "D", "P", "X", "*")
    for ax, field, label in ((axes[0], "train_s_per_sample", "training time per sample (s)"),
                             (axes[1], "infer_s_per_sample", "inference time per sample (s)")):
        for k, (method, titles) in enumerate(variants):
            points = sorted((r["n"], r[field]) for r in rows if (r["method"], r["titles"]) == (method, titles))
            ax.plot(*zip(*points), marker=markers[k % len(markers)], label=variant_name(method, titles),
                    linestyle="--" if method == "speeder_1tok" else "-")
        ax.set_xlabel("history length n (m = 5 candidates)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("Training")
    axes[1].set_title("Inference")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info(device: str) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": cpu, "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def feature_extraction_costs(data_dir: str | None) -> dict | None:
    """Seconds the frozen encoders took per modality, from a built DATA_DIR's feature manifests."""
    if not data_dir:
        return None
    costs = {}
    for manifest in sorted((Path(data_dir) / "features").glob("*.json")):
        record = json.loads(manifest.read_text())
        costs[manifest.stem] = {"seconds": record.get("seconds"), "encoder": record.get("key", {}).get("encoder"),
                                "items": record.get("key", {}).get("num_items")}
    return costs or None


# ---------------------------------------------------------------------------------------------------------- CLI
def parse_title_tokens(text: str) -> list:
    """`"real,20"` -> `["real", 20]`: each title setting once, in the order given."""
    settings = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part != REAL_TITLES and not (part.isdigit() and int(part) >= 1):
            raise ValueError(f"--title-tokens takes {REAL_TITLES!r} or token counts >= 1, comma-separated, got "
                             f"{part!r} (e.g. --title-tokens {DEFAULT_TITLE_TOKENS}).")
        setting = part if part == REAL_TITLES else int(part)
        if setting not in settings:
            settings.append(setting)
    if not settings:
        raise ValueError(f"--title-tokens needs at least one setting, e.g. {DEFAULT_TITLE_TOKENS}.")
    return settings


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="smollm2-135m-instruct",
                   help="tiny | smollm2-135m-instruct | a local HF causal-LM folder (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:k] (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                   help="history lengths n, comma-separated, all measured in one run (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=5, help="candidate pool size m (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; medians (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs before each measurement; at least 1 runs: the memory window "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch (samples per step); default 2 on CPU, 8 on CUDA")
    p.add_argument("--infer-samples", type=int, default=None, help="samples timed for inference (default: batch size)")
    p.add_argument("--infer-batch-size", type=int, default=1,
                   help="prompts per inference call; 1 = per-sample latency (default: %(default)s)")
    p.add_argument("--title-tokens", default=DEFAULT_TITLE_TOKENS,
                   help=f"title settings of the baselines, comma-separated: {REAL_TITLES!r} (the titles as they are) "
                        f"and/or K (every title cycled/truncated to K tokens; {PAPER_TITLE_TOKENS} is the paper's "
                        "setting) (default: %(default)s)")
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="LoRA target modules (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--isolation", choices=["process", "none"], default=None,
                   help="measure in a fresh subprocess (clean CPU peak memory; default on CPU) or in this process")
    p.add_argument("--data-dir", default=None, help="a built DATA_DIR: report its feature-extraction seconds")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads; 0 = torch's default. On a shared, busy machine 1 avoids OpenMP "
                        "oversubscription, which can slow small ops 10-100x (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/efficiency", help="output folder for efficiency.json / .png")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in str(args.lengths).split(",") if x.strip()]
    args.methods = [x.strip() for x in args.methods.split(",") if x.strip()]
    args.lora_targets = [x.strip() for x in args.lora_targets.split(",") if x.strip()]
    if unknown := set(args.methods) - set(METHODS):
        p.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    if not args.lengths or min(args.lengths) < 1:
        p.error("--lengths needs positive integers")
    try:
        args.title_tokens = parse_title_tokens(args.title_tokens)
    except ValueError as error:
        p.error(str(error))
    args.batch_size = args.batch_size or (8 if args.device.startswith("cuda") else 2)
    if args.candidates < 2 or args.repeats < 1 or args.warmup < 0 or args.batch_size < 1 or args.infer_batch_size < 1:
        p.error("--candidates >= 2, --repeats >= 1, --warmup >= 0, --batch-size >= 1, --infer-batch-size >= 1")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.infer_samples = args.infer_samples or args.batch_size
    args.isolation = args.isolation or ("none" if args.device.startswith("cuda") else "process")
    return args


def _worker_argv(args, out: str) -> list[str]:
    return ["--backbone", args.backbone, "--device", args.device, "--dtype", args.dtype,
            "--lengths", ",".join(map(str, args.lengths)), "--candidates", str(args.candidates),
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--infer-samples", str(args.infer_samples), "--infer-batch-size", str(args.infer_batch_size),
            "--title-tokens", ",".join(map(str, args.title_tokens)),
            "--lora-targets", ",".join(args.lora_targets), "--seed", str(args.seed), "--threads", str(args.threads),
            "--out", args.out, "--methods", ",".join(args.methods), "--worker", "--worker-out", out]


def title_settings_text(settings: list) -> str:
    return "; ".join("real MovieLens-100K titles, as they are" if s == REAL_TITLES
                     else f"PADDED to {s} tokens per title" + (" (the paper's setting, NOT real titles)"
                                                              if s == PAPER_TITLE_TOKENS else "")
                     for s in settings)


def profile_lines(profile: dict | None) -> list[str]:
    if not profile:
        return []
    lines = [f"\nProfile ({METHOD_NAMES[profile['prompt']]}, n = {profile['n']}), top ops by self CPU time:"]
    for phase in ("train_step", "inference"):
        if phase in profile:
            ops = ", ".join(f"{op['op']} {op['self_cpu_share']:.0%}" for op in profile[phase]["top_ops"][:5])
            lines.append(f"  {phase} ({profile[phase]['self_cpu_ms_total']:.1f} ms): {ops}")
    if "item_encoding" in profile:
        e = profile["item_encoding"]
        lines.append(f"  item encoder in one training step: {e['encoded_rows']} rows encoded for {e['placeholders']} "
                     f"placeholders and {e['distinct_items']} distinct items"
                     + ("" if e["once_per_distinct_item"] else " (NOT once per distinct item)"))
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        result = run_all(args, log=lambda s: print(s, flush=True))
        Path(args.worker_out).write_text(json.dumps(result))
        return result

    started = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    resolve_backbone(args.backbone)  # convert a named backbone once, before any worker
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    title_setting = title_settings_text(args.title_tokens)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load_start and load_start[0] > cores and not args.device.startswith("cuda") and args.threads != 1:
        print(f"WARNING: load average {load_start[0]:.1f} on {cores} cores: the machine is busy. Timings will be "
              "noisy, and several torch threads on busy cores can run 10x slower: consider --threads 1.", flush=True)
    print(f"Efficiency benchmark: backbone {args.backbone}, {args.device}/{args.dtype}, n = {args.lengths}, "
          f"m = {args.candidates}, batch {args.batch_size}, repeats {args.repeats}, warm-up {args.warmup}; "
          f"titles: {title_setting}", flush=True)
    if args.isolation == "process":  # one clean process (fresh heap, fixed mmap threshold) for the measurements
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "worker.json")
            env = {**QUIET_PROFILER_ENV, **os.environ,
                   **(CPU_WORKER_ENV if not args.device.startswith("cuda") else {})}
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *_worker_argv(args, out)],
                           check=True, env=env)
            result = json.loads(Path(out).read_text())
    else:
        result = run_all(args, log=lambda s: print(s, flush=True))

    rows = result["rows"]
    model_info = result["model"]
    comparisons = comparisons_of(rows, model_info)
    table = markdown_table(rows, comparisons, title_setting)
    targets = check_targets(comparisons)
    encoding = result["encoding"]
    encoding["feature_extraction"] = feature_extraction_costs(args.data_dir)
    machine = machine_info(args.device)
    if args.threads:
        machine["torch_threads"] = args.threads
    machine["load_average_start"] = load_start
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    memory_method = result["memory_method"]
    if args.isolation == "none" and not args.device.startswith("cuda"):
        memory_method += "; in-process (--isolation none): freed heap may be reused, CPU peaks can read low"
    report = {
        "benchmark": "speeder-efficiency",
        "config": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
        "titles": title_setting,
        "model": model_info,
        "machine": machine,
        "memory_method": memory_method,
        "encoding": encoding,
        "rows": rows,
        "comparisons": comparisons,
        "table": table,
        "targets": targets,
        "summary": summary(comparisons, targets),
        "profile": result["profile"],
        "notes": [
            "Per-sample times: training step time / batch size; inference call time / prompts per call. Medians.",
            "Each baseline row (title setting, n) is compared with each Speeder prompt: speedup = baseline time / "
            "Speeder time. Training bound: paper Eq. 3 with N = prompt + answer tokens and the backbone's hidden "
            "size d. Inference bound: (baseline prompt + generated tokens) / (Speeder prompt + 1), which charges "
            "Speeder for reading its prompt; a decode step costs more than a prompt token, so inference can exceed "
            "it. *_bound_backbone: the backbone's decoder-layer multiply-accumulates over the same tokens "
            "(backbone_macs; decode steps cached), the most a prompt's token saving can buy on this backbone. "
            "infer_ideal_eq4 (paper Eq. 4) and infer_ideal_prefill_decode (one prefill pass + t_out-1 decode "
            "steps) are kept for reference.",
            "speeder_1tok is the same model with history_indices=False: one <item> token per history item.",
            "Baselines generate a fixed len(title)+1 (EOS) tokens; Speeder scores the pool in one forward pass.",
            "Speeder's training step includes its trainable MRC item encoder on cached features; the baselines get "
            "cached item embeddings (their projectors are left out), which favours them.",
            "Timed runs are interleaved across prompts per n and repeat, so load drifts hit all prompts alike.",
            "profile: torch.profiler over one training step and one inference call of a Speeder prompt after the "
            "timed runs; item_encoding counts the rows its item encoder encoded in that step.",
        ],
        "wall_s": None,
    }
    report["wall_s"] = time.perf_counter() - started
    write_json_atomically(out_dir / "efficiency.json", report)
    if rows:
        plot(rows, out_dir / "efficiency.png",
             f"{args.backbone} · {args.device}/{args.dtype} · batch {args.batch_size} · titles: "
             + ", ".join(str(s) if s == REAL_TITLES else f"padded to {s} tokens" for s in args.title_tokens))
    print()
    print(table)
    print("\n".join(profile_lines(result["profile"])))
    if encoding.get("encode_items_s") is not None:
        print(f"\nOne-off: encode_items over {encoding['items']} items: {encoding['encode_items_s']:.3f} s "
              f"({encoding['encode_items_ms_per_item']:.3f} ms/item)")
    if encoding.get("feature_extraction"):
        print("Frozen feature extraction (from DATA_DIR manifests): " + ", ".join(
            f"{k} {v['seconds']} s ({v['encoder']})" for k, v in encoding["feature_extraction"].items()))
    for speeder, checks in targets.items():
        for name, t in checks.items():
            if not isinstance(t, dict):
                continue
            status = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT met")
            value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
            print(f"Target {name} ({METHOD_NAMES[speeder]}): {value} vs >= {t['target']}: {status}")
    print(f"Memory: {report['memory_method']}. Load average start {load_start}, end {machine['load_average_end']}. "
          f"Wall {report['wall_s']:.0f} s. Wrote {out_dir / 'efficiency.json'} and {out_dir / 'efficiency.png'}")
    return report


if __name__ == "__main__":
    main()
