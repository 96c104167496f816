"""Recommend for one test user from an exported Speeder folder, as a Hub user would: nothing from this repository
is imported, only transformers (remote code) and datasets. Ranks the user's stored candidate pool, then recommends
from the whole catalogue (K items retrieved from the item cache, re-ranked in one forward pass), with each retriever
the folder ships.

    python scripts/recommend_example.py outputs/hub/speeder-ml100k outputs/data/ml-100k [--index 0]
"""

import argparse
import json
from pathlib import Path

from datasets import load_from_disk
from transformers import AutoModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="Folder written by `python -m hub_upload export`.")
    parser.add_argument("data_dir", type=Path, help="Folder written by `python -m datasets_builder`.")
    parser.add_argument("--index", type=int, default=0, help="Which test sample to show.")
    args = parser.parse_args()

    model = AutoModel.from_pretrained(args.model_dir, trust_remote_code=True).eval()
    items = load_from_disk(str(args.data_dir / "items"))
    item_ids, titles = items["item_id"], items["title"]
    sample = load_from_disk(str(args.data_dir / "sequences"))["test"][args.index]
    history = [item_ids[i] for i in sample["history"]]
    candidates = [item_ids[i] for i in sample["candidates"]]
    ranking = model.recommend(history, candidates)

    title = dict(zip(item_ids, titles))
    print(f"Test user {sample['user_id']}: the last {len(history)} items, oldest first")
    for item_id in history:
        print(f"    {title[item_id]}")
    truth = item_ids[sample["target"]]
    print("Speeder's ranking of the candidate pool (one forward pass):")
    for rank, (item_id, score) in enumerate(ranking, 1):
        mark = "  <- the item the user picked next" if item_id == truth else ""
        print(f"  {rank}. {title[item_id]}  (score {score:.2f}){mark}")
    catalogue = {}
    for retriever in model.available_retrievers():
        catalogue[retriever] = model.recommend(history, retriever=retriever)
        print(f"Speeder's top picks from the whole catalogue ({len(model.item_cache)} items; the {retriever!r} "
              f"retriever's {len(catalogue[retriever])} best, the history left out, re-ranked in one pass):")
        for rank, (item_id, score) in enumerate(catalogue[retriever], 1):
            mark = "  <- the item the user picked next" if item_id == truth else ""
            print(f"  {rank}. {title.get(item_id, item_id)}  (score {score:.2f}){mark}")
    hits = {f"catalogue_hit@{len(ranked)}_{name}": truth in [item_id for item_id, _ in ranked]
            for name, ranked in catalogue.items()}
    print(json.dumps({"hit@1": ranking[0][0] == truth, **hits}))


if __name__ == "__main__":
    main()
