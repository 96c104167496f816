"""Benchmark: build + item features on the offline MovieLens-100K with the offline encoders.

Prints wall time per step and the process's peak resident memory after each step, as JSON. Every step is forced
(no cache reuse), so the figures are those of a first run.

    python bench/build_movielens.py [--out DIR] [--session-gap 86400|none] [--id-encoder sasrec|none]
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets_builder import build_dataset, compute_item_features, movielens_config  # noqa: E402


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="DATA_DIR (default: a temporary folder)")
    parser.add_argument("--session-gap", default="86400", help="seconds or 'none' (default 86400)")
    parser.add_argument("--id-encoder", default="sasrec", choices=["sasrec", "none"])
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-ml100k-"))
    gap = None if args.session_gap == "none" else float(args.session_gap)

    cores = len(os.sched_getaffinity(0))
    figures = {"machine": f"{platform.machine()}, {cores} CPU cores available", "data_dir": str(out)}
    start = time.perf_counter()
    stats = build_dataset(movielens_config(session_gap=gap), out, force=True)
    figures["build_s"] = round(time.perf_counter() - start, 2)
    figures["peak_rss_after_build_mib"] = peak_rss_mib()
    figures["table1"] = {key: stats[key] for key in ("interactions", "items", "sequences", "avg_sequence_length")}

    for modality, encoder in (("text", "all-MiniLM-L6-v2"), ("id", args.id_encoder)):
        if encoder == "none":
            continue
        specs = {"text_encoder": "none", "vision_encoder": "none", "id_encoder": "none"}
        specs[f"{modality}_encoder"] = encoder
        start = time.perf_counter()
        compute_item_features(out, **specs, force=True)
        figures[f"{modality}_features_s"] = round(time.perf_counter() - start, 2)
        figures[f"peak_rss_after_{modality}_mib"] = peak_rss_mib()
        if modality == "id":
            manifest = json.loads((out / "features" / "id.json").read_text())
            figures["sasrec_test_metrics"] = manifest["counts"]["test_metrics"]
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
