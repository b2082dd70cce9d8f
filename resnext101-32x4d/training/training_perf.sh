#!/usr/bin/env bash
# Training throughput of ResNeXt101-32x4d, as the original's training_perf.sh measured it:
# main.py --mode=training_benchmark, 200 warmup steps then 300 measured (500 batches), for
# AMP (batch AMP_BS per GPU) and FP32 (batch FP32_BS; TF32 on A100), each without and with
# XLA, first on 1 GPU (one process, no MPI) and then on all GPUs (mpiexec, one process each).
#
#   bash resnext101-32x4d/training/training_perf.sh [FP32_BS=64] [AMP_BS=128] [main.py flags...]
#
# Environment:
#   DATA_DIR     the TFRecords (default /data/tfrecords, as the original; DATA_DIR= (empty)
#                benchmarks on synthetic data).
#   RESULTS_DIR  where each run's main.py results (NAME/log.json) and output (NAME.log) go,
#                and summary.txt, this invocation's img/s per run (default:
#                results/training_perf in the repository).
#   NUM_GPUS     how many GPUs "all GPUs" is (default: the GPUs `nvidia-smi -L` lists).
#   PYTHON, BIND_TO, MPIEXEC, DRY_RUN=1: see common.sh.
# A run that fails is reported in the summary and the next one starts; the script then
# exits with status 1.
set -euo pipefail
# shellcheck source=resnext101-32x4d/training/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage="usage: $rnxt_script [FP32_BS=64] [AMP_BS=128] [main.py flags...]"
fp32_bs=${1:-64}
amp_bs=${2:-128}
for bs in "$fp32_bs" "$amp_bs"; do
    [[ $bs =~ ^[1-9][0-9]*$ ]] || rnxt_fail 2 "$usage (batch sizes are positive integers, not '$bs')"
done
extra=("${@:3}")

data=()
if [[ -n ${DATA_DIR-/data/tfrecords} ]]; then
    data=(--data_dir="${DATA_DIR-/data/tfrecords}")
fi
results=${RESULTS_DIR:-$RNXT_REPO/results/training_perf}
results=${results%/}

if [[ -n ${NUM_GPUS:-} ]]; then
    gpus=$NUM_GPUS
elif command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
else
    rnxt_fail 2 "error: nvidia-smi not found: set NUM_GPUS to the number of GPUs to use"
fi
[[ $gpus =~ ^[1-9][0-9]*$ ]] || rnxt_fail 2 "error: no GPUs to use (NUM_GPUS or nvidia-smi -L gave '$gpus')"

failed=0

# run NGPUS PRECISION XLA: one benchmark; PRECISION amp or fp32, XLA 0 or 1.
run() {
    local ngpus=$1 precision=$2 xla=$3 bs flags=() name cmd=() status=0
    if [[ $precision == amp ]]; then
        bs=$amp_bs
        flags=(--amp --static_loss_scale 128)
    else
        bs=$fp32_bs
    fi
    name=${precision}_bs${bs}_${ngpus}gpu
    if ((xla)); then
        flags+=(--xla)
        name+=_xla
    fi
    if ((ngpus > 1)); then
        cmd=("${RNXT_MPI[@]}" -np "$ngpus")
    fi
    cmd+=(
        "$RNXT_PYTHON" "$RNXT_MAIN" --arch=resnext101-32x4d --mode=training_benchmark
        --warmup_steps=200 --num_iter=500 --iter_unit=batch --batch_size="$bs"
        "${data[@]}" --results_dir="$results/$name" "${flags[@]}" "${extra[@]}"
    )
    rnxt_run "$results/$name.log" "${cmd[@]}" || status=$?
    rnxt_dry_run && return 0
    if ((status)); then
        failed=1
        echo "$name: FAILED (exit status $status), see $results/$name.log" >>"$results/summary.txt"
    else
        echo "$name: $(rnxt_metrics "$results/$name/log.json" train_throughput)" >>"$results/summary.txt"
    fi
}

if ! rnxt_dry_run; then
    mkdir -p "$results"
    echo "# training_perf.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $gpus GPU(s)" >"$results/summary.txt"
fi
for ngpus in 1 "$gpus"; do
    if ((ngpus > 1)); then
        rnxt_require_mpi
    fi
    run "$ngpus" amp 0
    run "$ngpus" amp 1
    run "$ngpus" fp32 0
    run "$ngpus" fp32 1
    ((gpus > 1)) || break
done

if ! rnxt_dry_run; then
    cat "$results/summary.txt"
fi
exit "$failed"
