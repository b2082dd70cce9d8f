#!/usr/bin/env bash
# Inference throughput and latency of ResNeXt101-32x4d, as the original's
# inference_benchmark.sh measured them: main.py --mode=inference_benchmark on one GPU, 50
# warmup batches then 350 measured (400 batches), batch sizes 1, 2, 4, ..., 128, for FP32
# (TF32 on A100), FP32+XLA, AMP and AMP+XLA, and AMP+XLA+DALI when DALI_IDX_DIR is given.
#
#   bash resnext101-32x4d/inference_benchmark.sh DATA_DIR [DALI_IDX_DIR] [main.py flags...]
#
# DATA_DIR holds the TFRecords (validation-*), DALI_IDX_DIR their DALI index files
# (utils/dali_index.sh); pass "" as DALI_IDX_DIR to give main.py flags without DALI.
# Environment:
#   RESULTS_DIR  where each run's main.py results (NAME/log.json) and output (NAME.log) go,
#                and summary.txt, this invocation's img/s and latency per run (default:
#                results/inference_benchmark in the repository).
#   BATCH_SIZES  the batch sizes (default "1 2 4 8 16 32 64 128").
#   PYTHON, DRY_RUN=1: see training/common.sh.
# A run that fails is reported in the summary and the next one starts; the script then
# exits with status 1.
set -euo pipefail
# shellcheck source=resnext101-32x4d/training/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/training/common.sh"

if [[ $# -lt 1 || -z $1 ]]; then
    rnxt_fail 2 "usage: $rnxt_script DATA_DIR [DALI_IDX_DIR] [main.py flags...]"
fi
data_dir=$1
idx_dir=${2:-}
extra=("${@:3}")
read -ra batch_sizes <<<"${BATCH_SIZES:-1 2 4 8 16 32 64 128}"
for bs in "${batch_sizes[@]}"; do
    [[ $bs =~ ^[1-9][0-9]*$ ]] || rnxt_fail 2 "error: BATCH_SIZES holds '$bs', not a positive integer"
done
((${#batch_sizes[@]})) || rnxt_fail 2 "error: BATCH_SIZES is empty"
results=${RESULTS_DIR:-$RNXT_REPO/results/inference_benchmark}
results=${results%/}

failed=0

# run NAME [FLAG...]: one configuration at every batch size.
run() {
    local name=$1 bs run_name status
    shift
    for bs in "${batch_sizes[@]}"; do
        run_name=${name}_bs${bs}
        status=0
        rnxt_run "$results/$run_name.log" \
            "$RNXT_PYTHON" "$RNXT_MAIN" --arch=resnext101-32x4d --mode=inference_benchmark \
            --warmup_steps=50 --num_iter=400 --iter_unit=batch --batch_size="$bs" \
            --data_dir="$data_dir" --results_dir="$results/$run_name" "$@" "${extra[@]}" ||
            status=$?
        rnxt_dry_run && continue
        if ((status)); then
            failed=1
            echo "$run_name: FAILED (exit status $status), see $results/$run_name.log"
        else
            echo "$run_name: $(rnxt_metrics "$results/$run_name/log.json" eval_throughput \
                eval_latency_avg eval_latency_p90 eval_latency_p95 eval_latency_p99)"
        fi >>"$results/summary.txt"
    done
}

if ! rnxt_dry_run; then
    mkdir -p "$results"
    echo "# inference_benchmark.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$results/summary.txt"
fi
run fp32
run fp32_xla --xla
run amp --amp
run amp_xla --amp --xla
if [[ -n $idx_dir ]]; then
    run amp_xla_dali --amp --xla --dali --data_idx_dir="$idx_dir"
fi

if ! rnxt_dry_run; then
    cat "$results/summary.txt"
fi
exit "$failed"
