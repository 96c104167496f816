#!/usr/bin/env bash
# Runs every learning test (a test asserting that a model learns) over training seeds and torch thread counts and
# records each outcome, so that a change to one of them lands with its pass rate, not one lucky run:
#   bash scripts/learning_tests.sh                       # seeds 1,2,3 x threads 1,2
#   SEEDS=7,42 THREADS=1 RESULTS=/tmp/loop bash scripts/learning_tests.sh
#   BF16=false,true bash scripts/learning_tests.sh      # also with bf16 autocast (native with AMX or AVX512-BF16, slower without)
# Each test reads its seed from SPEEDER_TEST_SEED (tests/speeder_fixtures.learning_seed) and the LLM tests their
# precision from SPEEDER_TEST_BF16 (learning_bf16). Writes RESULTS/outcomes.tsv (one row per test case, thread
# count, seed and precision) and RESULTS/pass_rates.tsv; a failing run's log tail goes to
# RESULTS/failures.log. Exits 0 whatever the outcomes: the files are the result. TESTS (space-separated pytest node
# ids) may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the repository's packages (only modeling_speeder is installed)
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
SEEDS=${SEEDS:-1,2,3}
THREADS=${THREADS:-1,2}
BF16=${BF16:-false}
RESULTS=${RESULTS:-results/learning_tests}
TESTS=${TESTS:-tests/test_vision_check.py::test_speeder_with_vision_beats_speeder_without \
tests/test_trainer.py::test_training_learns_what_the_item_features_say \
tests/test_baselines.py::test_baseline_learns_planted_next_item_pattern}
[ -x "$PY" ] || { echo "No .venv here: run 'bash scripts/install.sh' first." >&2; exit 1; }

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, AMX $(grep -q amx_tile /proc/cpuinfo && echo yes || echo no)"
mkdir -p "$RESULTS"
outcomes=$RESULTS/outcomes.tsv
printf 'test\tthreads\tseed\toutcome\tseconds\tmachine\tbf16\n' > "$outcomes.partial"
: > "$RESULTS/failures.log"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for bf16 in ${BF16//,/ }; do
for threads in ${THREADS//,/ }; do
    for seed in ${SEEDS//,/ }; do
        for test in $TESTS; do
            echo "== $test, $threads thread(s), seed $seed, bf16 $bf16"
            started=$(date +%s)
            OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads SPEEDER_TEST_SEED=$seed SPEEDER_TEST_BF16=$bf16 \
                "$PY" -m pytest -q -rA -p no:cacheprovider "$test" > "$log" 2>&1 || true
            seconds=$(( $(date +%s) - started ))
            cases=$(grep -E '^(PASSED|FAILED|ERROR) ' "$log" | sort -u || true)
            [ -n "$cases" ] || cases="ERROR $test (no outcome: see failures.log)"
            while read -r outcome case _; do
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$threads" "$seed" "${outcome,,}" "$seconds" "$machine" \
                    "$bf16" >> "$outcomes.partial"
                echo "   $outcome $case (${seconds} s)"
            done <<< "$cases"
            if grep -qE '^(FAILED|ERROR) ' <<< "$cases"; then
                { echo "== $test, $threads thread(s), seed $seed, bf16 $bf16"; tail -n 40 "$log"; } >> "$RESULTS/failures.log"
            fi
        done
    done
done
done
mv "$outcomes.partial" "$outcomes"
awk -F'\t' 'NR > 1 { runs[$1]++; if ($4 == "passed") passed[$1]++ }
    END { print "test\tpassed\truns"; for (t in runs) printf "%s\t%d\t%d\n", t, passed[t], runs[t] }' "$outcomes" \
    > "$RESULTS/pass_rates.tsv"
column -t -s $'\t' "$RESULTS/pass_rates.tsv"
