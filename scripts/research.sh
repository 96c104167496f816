#!/usr/bin/env bash
# The research runs behind the README's quality claims, on MovieLens-100K (hours on 2 CPU cores; every step resumes
# after an interruption):
#   1. the data on SPLIT_SEEDS (each seed of the builder is another 7:2:1 split with its own stored pools),
#   2. `python -m trainer.research`: Speeder (CONFIG) and the ID baselines for every split x training seed (SEEDS),
#      with the Table 3 ABLATIONS and, with LLARA=true, the LLaRA-style baseline on Speeder's training budget,
#   3. the untuned backbone zero-shot on the first split,
#   4. the vision check: configs/vision_check.yaml on generated images, with and without vision.
# Small result files (metrics, per-sample predictions, summaries) land in RESULTS, to be committed; weights stay in
# OUT. CONFIG, OUT, RESULTS, SEEDS, SPLIT_SEEDS, ABLATIONS, LLARA, SASREC_EPOCHS, BASELINE_EPOCHS,
# VISION_CHECK_STEPS may be overridden (tests/test_research.py runs a tiny version).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the repository's packages (only modeling_speeder is installed)
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
CONFIG=${CONFIG:-configs/demo.yaml}
OUT=${OUT:-outputs/research}
RESULTS=${RESULTS:-results/research}
SEEDS=${SEEDS:-42,43,44}
SPLIT_SEEDS=${SPLIT_SEEDS:-42,7}
ABLATIONS=${ABLATIONS:-none}
LLARA=${LLARA:-true}
[ -x "$PY" ] || { echo "No .venv here: run 'bash scripts/install.sh' first." >&2; exit 1; }

DATA_DIRS=()
for split_seed in ${SPLIT_SEEDS//,/ }; do
    data=$OUT/data/ml-100k-split$split_seed
    echo "== data: MovieLens-100K, split seed $split_seed -> $data"
    "$PY" -m datasets_builder movielens --out "$data" --config "$CONFIG" --seed "$split_seed" \
        --id-encoder-arg epochs="${SASREC_EPOCHS:-40}" --id-encoder-arg patience=5
    DATA_DIRS+=("$data")
done

echo "== Speeder and the baselines: splits ${SPLIT_SEEDS}, seeds ${SEEDS}, ablations ${ABLATIONS}, LLaRA-style ${LLARA}"
"$PY" -m trainer.research --config "$CONFIG" --data_dir "$(IFS=,; echo "${DATA_DIRS[*]}")" --seeds "$SEEDS" \
    --output_dir "$OUT/runs" --results_dir "$RESULTS" --ablations "$ABLATIONS" --llara "$LLARA" \
    --baseline_epochs "${BASELINE_EPOCHS:-80}"

echo "== the untuned backbone, zero-shot, on split ${DATA_DIRS[0]}"
[ -f "${DATA_DIRS[0]}/baselines/zero_shot.json" ] || "$PY" -m trainer.llm_baselines "${DATA_DIRS[0]}" --models zero_shot \
    --config "$CONFIG"
mkdir -p "$RESULTS/zero_shot"
cp "${DATA_DIRS[0]}"/baselines/zero_shot*.json* "$RESULTS/zero_shot/"

echo "== vision check: generated items whose target only its image tells apart, with and without vision"
SYN_RAW=$OUT/data/synthetic-raw
SYN=$OUT/data/synthetic
VISION_RUN=$OUT/runs/vision_check
VISION_ARGS=(--config configs/vision_check.yaml --data_dir "$SYN" --output_dir "$VISION_RUN")
[ -z "${VISION_CHECK_STEPS:-}" ] || VISION_ARGS+=(--max_steps "$VISION_CHECK_STEPS")
"$PY" -m datasets_builder synthetic --out "$SYN_RAW" > /dev/null
"$PY" -m datasets_builder build --format amazon2018 --interactions "$SYN_RAW/reviews.jsonl" \
    --metadata "$SYN_RAW/metadata.jsonl" --image-dir "$SYN_RAW/images" --image-pattern '{item_id}.png' \
    --max-history 8 --out "$SYN" > /dev/null
"$PY" -m datasets_builder features "$SYN" --id-encoder none
"$PY" trainer/run.py "${VISION_ARGS[@]}"
"$PY" trainer/ablations.py "${VISION_ARGS[@]}" --ablations wo_vision
"$PY" -m trainer.report --run "$VISION_RUN" --vision-check "$VISION_RUN" --out "$RESULTS/vision_check"
for run in "$VISION_RUN" "$VISION_RUN/ablations/wo_vision"; do
    target=$RESULTS/vision_check/$(realpath --relative-to="$VISION_RUN" "$run")
    mkdir -p "$target"
    cp "$run"/results.json "$run"/results.predictions.jsonl "$target/"
done
echo "Done. Summary: $RESULTS/summary.md; vision check: $RESULTS/vision_check/report.md"
