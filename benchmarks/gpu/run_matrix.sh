#!/usr/bin/env bash
# The original README's benchmark matrix on one GPU, in short runs, within a time budget:
#   training  (main.py --mode=training_benchmark): batch 64, 128, 256 x FP32 (TF32 on
#             Ampere and newer), FP32+XLA, AMP, AMP+XLA;
#   inference (main.py --mode=inference_benchmark): batch 1, 2, 4, ..., 128 x FP32, AMP,
#             AMP+XLA, then AMP+XLA+DALI when DALI_IDX_DIR is given, then FP32+XLA;
# and writes the README-format tables (throughput, latency avg/p90/p95/p99) to a file.
#
#   bash benchmarks/gpu/run_matrix.sh [DATA_DIR [DALI_IDX_DIR]]
#
# Without DATA_DIR the runs use main.py's synthetic data (no input pipeline in the way);
# DALI needs DATA_DIR (TFRecords) and DALI_IDX_DIR (their index files, utils/dali_index.sh).
#
# Fails loudly: exit 1 with one line on stderr when TensorFlow sees no GPU (checked before
# any run) or when a run's output shows the model ran on CPU (TensorFlow created no GPU
# device, or the throughput is below MIN_GPU_IMG_S, far under any GPU's and over this
# model's speed at 224 px on a 2-core CPU, 2-10 img/s: benchmarks/RESULTS.md). The run
# then stops at once.
#
# Time: the runs share BUDGET_SECONDS (default 540, so the whole script ends within 10
# minutes with its GPU check); each run is capped at RUN_TIMEOUT seconds (default 150) and
# at what is left of the budget. They go in order of importance (the cells the original
# published first, then training, then inference); a run for which too little time is left
# is not started and its cell reads "skipped". A run that fails, times out or gives no
# result is reported in the table and makes the exit status 1 at the end; "OOM" (the batch
# does not fit this GPU) does not.
#
# Environment (all optional):
#   PYTHON          interpreter for main.py (default: the repository's .venv/bin/python,
#                   else python3)
#   RESULTS_DIR     per-run results and outputs (default: results/gpu_matrix in the repo)
#   OUT             the tables (default: RESULTS_DIR/gpu_matrix.md)
#   BUDGET_SECONDS, RUN_TIMEOUT   see above
#   TRAIN_BATCHES   default "64 128 256";  INFER_BATCHES  default "1 2 4 8 16 32 64 128";
#                   set one empty (TRAIN_BATCHES=) to leave that half out
#   TRAIN_WARMUP/TRAIN_ITER  warm-up and total steps per training run (default 5 / 20)
#   INFER_WARMUP/INFER_ITER  warm-up and total batches per inference run (default 10 / 50)
#   MIN_GPU_IMG_S   below this img/s a run counts as having run on CPU (default 20)
#   DRY_RUN=1       print every command (one per line, shell-quoted) and run nothing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
script=$(basename "$0")
helper=$here/matrix_table.py

fail() { # fail STATUS MESSAGE: one line on stderr, exit STATUS
    echo "$script: error: $2" >&2
    exit "$1"
}
dry_run() { [[ -n ${DRY_RUN:-} && $DRY_RUN != 0 ]]; }
show() { # the command on one line, each word quoted for the shell where needed
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
}
positive_ints() { # positive_ints NAME WORD...: fail unless every WORD is a positive integer
    local name=$1 word
    shift
    for word in "$@"; do
        [[ $word =~ ^[1-9][0-9]*$ ]] || fail 2 "$name holds '$word', not a positive integer"
    done
}

data_dir=${1:-}
idx_dir=${2:-}
if [[ -n $idx_dir && -z $data_dir ]]; then
    fail 2 "DALI_IDX_DIR needs DATA_DIR (DALI reads the TFRecords): $script DATA_DIR DALI_IDX_DIR"
fi
# shellcheck source=scripts/python.sh
source "$repo/scripts/python.sh"
py=$(rnxt_python "$repo")
results=${RESULTS_DIR:-$repo/results/gpu_matrix}
results=${results%/}
out=${OUT:-$results/gpu_matrix.md}
manifest=$results/manifest.tsv
budget=${BUDGET_SECONDS:-540}
run_cap=${RUN_TIMEOUT:-150}
min_img_s=${MIN_GPU_IMG_S:-20}
read -ra train_batches <<<"${TRAIN_BATCHES-64 128 256}"
read -ra infer_batches <<<"${INFER_BATCHES-1 2 4 8 16 32 64 128}"
train_warmup=${TRAIN_WARMUP:-5}
train_iter=${TRAIN_ITER:-20}
infer_warmup=${INFER_WARMUP:-10}
infer_iter=${INFER_ITER:-50}
positive_ints TRAIN_BATCHES "${train_batches[@]}"
positive_ints INFER_BATCHES "${infer_batches[@]}"
((${#train_batches[@]} + ${#infer_batches[@]})) || fail 2 "TRAIN_BATCHES and INFER_BATCHES are both empty"
positive_ints "BUDGET_SECONDS, RUN_TIMEOUT, MIN_GPU_IMG_S, TRAIN_ITER or INFER_ITER" \
    "$budget" "$run_cap" "$min_img_s" "$train_iter" "$infer_iter"
[[ $train_warmup =~ ^[0-9]+$ && $infer_warmup =~ ^[0-9]+$ ]] ||
    fail 2 "TRAIN_WARMUP and INFER_WARMUP must be integers >= 0"
((train_iter > train_warmup && infer_iter > infer_warmup)) ||
    fail 2 "TRAIN_ITER / INFER_ITER must be larger than TRAIN_WARMUP / INFER_WARMUP"

# The plan: KIND:CONFIG:BATCH, most important first.
in_list() { # in_list WORD LIST...
    local word=$1 item
    shift
    for item in "$@"; do [[ $item == "$word" ]] && return 0; done
    return 1
}
plan=()
add() { # add KIND CONFIG BATCH: once, and only for batch sizes of the matrix
    local spec=$1:$2:$3
    if [[ $1 == train ]]; then in_list "$3" "${train_batches[@]}" || return 0; fi
    if [[ $1 == infer ]]; then in_list "$3" "${infer_batches[@]}" || return 0; fi
    ((${#plan[@]})) && in_list "$spec" "${plan[@]}" && return 0
    plan+=("$spec")
}
# 1. The cells the original's README published: A100 AMP+XLA bs 256 and TF32+XLA bs 128,
#    V100 AMP bs 128 and FP32 bs 64; inference AMP+XLA bs 128 and 1, AMP bs 1.
add train amp_xla 256
add train fp32_xla 128
add train amp 128
add train fp32 64
add infer amp_xla 128
add infer amp_xla 1
add infer amp 1
add infer fp32 1
# 2. The rest of the training matrix, then 3. the rest of the inference matrix.
for config in amp_xla fp32_xla amp fp32; do
    for bs in "${train_batches[@]}"; do add train "$config" "$bs"; done
done
infer_configs=(fp32 amp amp_xla)
[[ -n $idx_dir ]] && infer_configs+=(amp_xla_dali)
infer_configs+=(fp32_xla)
for config in "${infer_configs[@]}"; do
    for bs in "${infer_batches[@]}"; do add infer "$config" "$bs"; done
done

data=()
[[ -n $data_dir ]] && data=(--data_dir="$data_dir")

# command KIND CONFIG BATCH: sets cmd to the main.py command of one run.
command_of() {
    local kind=$1 config=$2 bs=$3 flags=()
    case $config in
        fp32) ;;
        fp32_xla) flags=(--xla) ;;
        amp) flags=(--amp) ;;
        amp_xla) flags=(--amp --xla) ;;
        amp_xla_dali) flags=(--amp --xla --dali --data_idx_dir="$idx_dir") ;;
        *) fail 2 "unknown configuration $config" ;;
    esac
    if [[ $kind == train ]]; then
        # The original's training_perf.sh: static loss scale 128 with AMP.
        [[ $config == amp* ]] && flags+=(--static_loss_scale=128)
        cmd=("$py" "$repo/main.py" --arch=resnext101-32x4d --mode=training_benchmark
            --warmup_steps="$train_warmup" --num_iter="$train_iter" --iter_unit=batch)
    else
        cmd=("$py" "$repo/main.py" --arch=resnext101-32x4d --mode=inference_benchmark
            --warmup_steps="$infer_warmup" --num_iter="$infer_iter" --iter_unit=batch)
    fi
    cmd+=(--batch_size="$bs" "${data[@]}" --results_dir="$results/${kind}_${config}_bs$bs"
        "${flags[@]}")
}

gpu_check=("$py" -c 'import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
print(len(tf.config.list_physical_devices("GPU")))')

if dry_run; then
    show "${gpu_check[@]}"
    for spec in "${plan[@]}"; do
        IFS=: read -r kind config bs <<<"$spec"
        command_of "$kind" "$config" "$bs"
        show env TF_CPP_MIN_LOG_LEVEL=0 "${cmd[@]}"
    done
    exit 0
fi

start=$SECONDS
gpus=$(timeout 120 "${gpu_check[@]}" 2>/dev/null | tail -n 1) ||
    fail 1 "TensorFlow does not start with $py (tried: tf.config.list_physical_devices('GPU'))"
if ! [[ $gpus =~ ^[0-9]+$ ]] || ((gpus == 0)); then
    fail 1 "TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') is empty with $py): this matrix measures GPUs"
fi

mkdir -p "$results"
: >"$manifest"
failed=0
skipped=0
n=0
steps_note="training $((train_iter - train_warmup)) steps measured after $train_warmup, inference $((infer_iter - infer_warmup)) batches after $infer_warmup; $(date -u +%Y-%m-%dT%H:%MZ)"
write_table() { "$py" "$helper" table "$manifest" "$out" "$steps_note"; }
for spec in "${plan[@]}"; do
    IFS=: read -r kind config bs <<<"$spec"
    n=$((n + 1))
    name=${kind}_${config}_bs$bs
    output=$results/$name.log
    command_of "$kind" "$config" "$bs"
    left=$((budget - (SECONDS - start)))
    status=ok
    note=""
    if ((left < 20)); then
        status=skipped
        skipped=$((skipped + 1))
    else
        limit=$((left < run_cap ? left : run_cap))
        rm -rf "${results:?}/$name"
        rc=0
        # TF_CPP_MIN_LOG_LEVEL=0: TensorFlow logs the GPU device it creates; the check reads it.
        timeout --kill-after=10 "$limit" env TF_CPP_MIN_LOG_LEVEL=0 "${cmd[@]}" >"$output" 2>&1 ||
            rc=$?
        if ((rc == 0)); then
            key=train_throughput
            [[ $kind == infer ]] && key=eval_throughput
            check_rc=0
            note=$("$py" "$helper" check "$output" "$results/$name/log.json" "$key" "$min_img_s") ||
                check_rc=$?
            if ((check_rc == 3)); then
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$config" "$bs" "CPU" "$results/$name" \
                    "$output" >>"$manifest"
                write_table || true
                fail 1 "$kind $config batch $bs: $note"
            elif ((check_rc != 0)); then
                status="no result"
            fi
        elif ((rc == 124 || rc == 137)); then
            status=timeout
            note="after ${limit} s"
        elif grep -qE 'ResourceExhausted|OOM when allocating|out of memory' "$output"; then
            status=OOM
        else
            status=failed
            note="exit status $rc"
        fi
        [[ $status == ok || $status == OOM ]] || failed=$((failed + 1))
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$config" "$bs" "$status" "$results/$name" \
        "$output" >>"$manifest"
    printf '[%2d/%d %4ds] %-5s %-12s bs %-3s %s %s\n' "$n" "${#plan[@]}" $((SECONDS - start)) \
        "$kind" "$config" "$bs" "$status" "${note#ok }"
done

write_table
echo "tables: $out"
cat "$out"
if ((skipped)); then
    echo "$script: $skipped run(s) skipped: the time budget (BUDGET_SECONDS=$budget) ran out"
fi
if ((failed)); then
    fail 1 "$failed run(s) failed, timed out or gave no result; see the table in $out"
fi
