"""Full-catalogue evaluation of an exported folder: SASRec alone against SASRec → Speeder.

    python -m trainer.full_ranking outputs/hub/speeder-ml100k-demo --data-dir outputs/data/ml-100k \
        --split test --out results/main_job/full_ranking_test.json

For every sequence of the split, the folder's SASRec retriever (`retriever_sasrec.safetensors`, exported with
`--sasrec-retriever`) scores every cached item after the sequence's stored history (its items left out unless
`--keep-history`) and its top-`top_k` list is SASRec's answer. SASRec → Speeder lets Speeder re-rank SASRec's first
`num_candidates` items in one forward pass (the pool size Speeder was trained on) and keeps SASRec's order after them;
with more candidates than `top_k` it is the re-ranked list cut to `top_k`. Both lists are scored against the
sequence's next item: HR@1, Recall@k and NDCG@k (one relevant item, so Recall@k = HR@k), each with a bootstrap
interval over sequences and a paired interval of the difference. A third list bounds what any re-ranker of those
`num_candidates` items can reach: SASRec's with the target moved first whenever it is among them. The JSON holds
every sequence's lists, so any figure can be recomputed.
"""

import argparse
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModel

from datasets_builder.build import load_built_dataset
from metrics.predictions import bootstrap_interval, paired_difference
from modeling_speeder.file_utils import write_json_atomically
from modeling_speeder.retrieval_speeder import top_rows

from .run import run_cli

MODELS = ("sasrec", "sasrec_speeder", "rerank_bound")
MODEL_NAMES = {"sasrec": "SASRec", "sasrec_speeder": "SASRec → Speeder",
               "rerank_bound": "bound: SASRec with the target moved first when re-ranked"}


def list_metrics(ranked: list[str], target: str, k: int) -> dict[str, float]:
    """HR@1, Recall@k and NDCG@k of one ranked list (best first) with one relevant item."""
    rank = ranked.index(target) if target in ranked[:k] else None
    return {
        "hr@1": float(rank == 0),
        f"recall@{k}": float(rank is not None),
        f"ndcg@{k}": 0.0 if rank is None else 1.0 / math.log2(rank + 2),
    }


def rerank_bound(ranked: list[str], target: str, num_candidates: int) -> list[str]:
    """`ranked` as a perfect re-ranker of its first `num_candidates` items leaves it: the target first when it is
    among them, else unchanged."""
    if target not in ranked[:num_candidates]:
        return ranked
    return [target] + [item_id for item_id in ranked if item_id != target]


def sasrec_top_lists(retriever, known: torch.Tensor, histories: list[list[str]], top_k: int,
                     exclude_history: bool) -> list[list[str]]:
    """The SASRec `retriever`'s `top_k` items per history, best first, among the `known` `(num_items,)` ones."""
    lists = []
    for history, scores in zip(histories, retriever.score(histories)):
        allowed = known.clone()
        if exclude_history:
            allowed[[retriever.rows[item_id] for item_id in history if item_id in retriever.rows]] = False
        lists.append([retriever.item_ids[row] for row in top_rows(scores, top_k, allowed)])
    return lists


def evaluate_full_ranking(model, rows, item_ids: list[str], num_candidates: int, top_k: int = 10,
                          exclude_history: bool = True, batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Both models' lists and metrics@`top_k` for `rows` (stored split rows: `sequence_id`, `history`, `target` as
    item indices into `item_ids`); SASRec retrieves `max(top_k, num_candidates)` items and Speeder re-ranks the first
    `num_candidates`. Returns (summary, one record per sequence)."""
    retriever = model.load_sasrec_retriever()
    known = torch.tensor([item_id in model.item_cache for item_id in retriever.item_ids])  # Speeder can rank them
    records = []
    for start in tqdm(range(0, len(rows), batch_size), desc="full ranking", unit="batch"):
        batch = rows[start:start + batch_size]
        histories = [[item_ids[i] for i in history] for history in batch["history"]]
        sasrec_lists = sasrec_top_lists(retriever, known, histories, max(top_k, num_candidates), exclude_history)
        reranked = model.recommend_batch(histories, [ranked[:num_candidates] for ranked in sasrec_lists],
                                         batch_size=batch_size)
        for sequence_id, target, sasrec_list, ranking in zip(batch["sequence_id"], batch["target"], sasrec_lists,
                                                              reranked):
            speeder_list = [item_id for item_id, _ in ranking] + sasrec_list[num_candidates:]
            lists = {"sasrec": sasrec_list, "sasrec_speeder": speeder_list,
                     "rerank_bound": rerank_bound(sasrec_list, item_ids[target], num_candidates)}
            records.append({"sequence_id": int(sequence_id), "target": item_ids[target], **lists,
                            "metrics": {name: list_metrics(ranked, item_ids[target], top_k)
                                        for name, ranked in lists.items()}})
    return summarize(records), records


def summarize(records: list[dict]) -> dict:
    """Per model and metric, the mean with its 95% bootstrap interval over sequences; per metric, the paired interval
    of SASRec → Speeder minus SASRec."""
    per_sequence = {name: {metric: {r["sequence_id"]: r["metrics"][name][metric] for r in records}
                           for metric in records[0]["metrics"][name]} for name in MODELS}
    summary = {name: {metric: bootstrap_interval(values.values()) for metric, values in metrics.items()}
               for name, metrics in per_sequence.items()}
    summary["difference"] = {metric: paired_difference(per_sequence["sasrec_speeder"][metric], values)
                             for metric, values in per_sequence["sasrec"].items()}
    return summary


def markdown_table(summary: dict) -> str:
    """The summary as a Markdown table: mean [95% interval] per model and metric, then the paired difference."""
    metrics = list(summary["sasrec"])
    cell = lambda s: f"{s['mean']:.4f} [{s['low']:.4f}, {s['high']:.4f}]"  # noqa: E731
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name in MODELS:
        lines.append(f"| {MODEL_NAMES[name]} | " + " | ".join(cell(summary[name][m]) for m in metrics) + " |")
    lines.append("| SASRec → Speeder − SASRec (paired) | "
                 + " | ".join(cell(summary["difference"][m]) for m in metrics) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported Speeder folder with a SASRec retriever (export --sasrec-retriever)")
    parser.add_argument("--data-dir", required=True, help="the built data set the model was trained on")
    parser.add_argument("--split", default="test", help="valid or test (default: test)")
    parser.add_argument("--out", required=True, help="JSON to write: summary, table and every sequence's lists")
    parser.add_argument("--num-candidates", type=int, default=None,
                        help="SASRec's top items Speeder re-ranks (default: the model's number of candidate labels)")
    parser.add_argument("--top-k", type=int, default=10, help="length of the final list (default: 10)")
    parser.add_argument("--keep-history", action="store_true", help="let the history's items be recommended")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the split's first N sequences")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"{args.model} is not a folder: export a run first (python -m hub_upload export ...).")
    data, items, _ = load_built_dataset(args.data_dir)
    if args.split not in ("valid", "test"):
        raise ValueError(f"--split must be valid or test, got {args.split!r}.")
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32).eval()
    if "sasrec" not in model.available_retrievers():
        raise ValueError(f"{args.model} has no SASRec retriever: export the run again with --sasrec-retriever.")
    num_labels = len(model.config.candidate_labels)
    num_candidates = args.num_candidates or num_labels
    if not 1 <= num_candidates <= num_labels:
        raise ValueError(f"--num-candidates must lie in 1..{num_labels} (the model's candidate labels), got "
                         f"{num_candidates}.")
    rows = data[args.split]
    if args.max_samples is not None:
        rows = rows.select(range(min(args.max_samples, len(rows))))
    summary, records = evaluate_full_ranking(model, rows, list(items["item_id"]), num_candidates, args.top_k,
                                             not args.keep_history, args.batch_size)
    table = markdown_table(summary)
    settings = {"model": str(args.model), "data_dir": str(args.data_dir), "split": args.split,
                "num_candidates": num_candidates, "top_k": args.top_k, "exclude_history": not args.keep_history,
                "num_sequences": len(records)}
    write_json_atomically(Path(args.out), {"settings": settings, "summary": summary, "table": table, "records": records})
    print(table)
    return summary


if __name__ == "__main__":
    run_cli(main)
