# shellcheck shell=bash
# Shared by the scripts of resnext101-32x4d/ (sourced, not run): where main.py is, which
# Python runs it, how MPI launches it, the training recipe's main.py command, and DRY_RUN.
#
# Environment (all optional):
#   PYTHON   the interpreter for main.py. Default: the repository's .venv/bin/python when it
#            exists (made by `make setup`), else python3 from PATH (the Docker image's).
#   BIND_TO  mpiexec's --bind-to value: socket (default, as the original's DGX runs), core,
#            none, ...; set it empty (BIND_TO=) to leave the option out.
#   MPIEXEC  the MPI launcher (default mpiexec).
#   DRY_RUN  1: print every command a script would run, one per line, shell-quoted, and run
#            nothing (no directories made, no logs written). 0 or empty: run.
#
# The scripts may be called from any directory: main.py is found from this file's place;
# relative paths given to them stay relative to the caller's directory.

RNXT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
RNXT_MAIN=$RNXT_REPO/main.py

# shellcheck source=scripts/python.sh
source "$RNXT_REPO/scripts/python.sh"
RNXT_PYTHON=$(rnxt_python "$RNXT_REPO")

# The launcher and its options, without -np.
RNXT_MPI=("${MPIEXEC:-mpiexec}" --allow-run-as-root)
if [[ -n ${BIND_TO-socket} ]]; then
    RNXT_MPI+=(--bind-to "${BIND_TO-socket}")
fi

rnxt_script=$(basename "$0")

# rnxt_fail STATUS MESSAGE: one line on stderr, exit STATUS (2: usage, 1: environment).
rnxt_fail() {
    echo "$rnxt_script: $2" >&2
    exit "$1"
}

rnxt_dry_run() {
    [[ -n ${DRY_RUN:-} && ${DRY_RUN} != 0 ]]
}

# rnxt_quote WORD...: the words on one line, each quoted for a POSIX shell only where it
# needs it (the rule of Python's shlex.quote, so shlex.split reads the line back exactly).
rnxt_quote() {
    local LC_ALL=C word safe='^[A-Za-z0-9_@%+=:,./-]+$' q="'\\''" out=()
    for word in "$@"; do
        if [[ $word =~ $safe ]]; then
            out+=("$word")
        else
            out+=("'${word//\'/$q}'")
        fi
    done
    printf '%s\n' "${out[*]}"
}

# rnxt_require_mpi: a one-line error unless the MPI launcher is installed (real runs only).
rnxt_require_mpi() {
    rnxt_dry_run || command -v "${RNXT_MPI[0]}" >/dev/null ||
        rnxt_fail 1 "error: ${RNXT_MPI[0]} not found: install Open MPI (scripts/setup_env.sh does) or set MPIEXEC"
}

# rnxt_run LOG CMD...: print CMD under DRY_RUN; otherwise run it, its output on the terminal
# and in LOG. Returns CMD's exit status.
rnxt_run() {
    local log=$1
    shift
    if rnxt_dry_run; then
        rnxt_quote "$@"
        return 0
    fi
    mkdir -p "$(dirname "$log")"
    "$@" 2>&1 | tee "$log"
}

# rnxt_metrics LOG_JSON KEY...: "KEY=VALUE ..." from the last DLLogger record holding each
# KEY in main.py's log file, or "no result" when there is none.
rnxt_metrics() {
    "$RNXT_PYTHON" -c '
import json, sys
found = {}
try:
    with open(sys.argv[1], encoding="utf-8") as log:
        for line in log:
            if line.startswith("DLLL "):
                data = json.loads(line[5:]).get("data") or {}
                found.update({k: data[k] for k in sys.argv[2:] if k in data})
except (OSError, ValueError):
    pass
text = " ".join(
    f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in found.items()
)
print(text or "no result")
' "$@" 2>/dev/null || echo "no result"
}

# rnxt_train NP EPOCHS BATCH [RECIPE FLAG...] -- WORKSPACE DATA_DIR [MAIN.PY FLAG...]
# One training script: the recipe's common flags (below) plus the script's own (AMP, MixUp),
# NP processes (one per GPU), EPOCHS epochs of BATCH images per GPU, TFRecords from
# DATA_DIR/tfrecords, DALI index files from DATA_DIR/dali_idx (used with --dali), results
# (logs, checkpoints) in WORKSPACE/results. The caller's flags come last, so they add to the
# recipe's (--xla, --dali) or override them (argparse keeps the last value).
# The script becomes mpiexec (exec), so signals sent to it reach mpiexec: Open MPI forwards
# SIGUSR1 to every rank, which stops training cleanly after a checkpoint (on SIGTERM it also
# signals the ranks, but kills them a few seconds later).
rnxt_train() {
    local np=$1 epochs=$2 batch=$3
    shift 3
    local recipe=()
    while [[ $# -gt 0 && $1 != -- ]]; do
        recipe+=("$1")
        shift
    done
    [[ $# -gt 0 ]] && shift
    if [[ $# -lt 2 || -z $1 || -z $2 ]]; then
        rnxt_fail 2 "usage: $rnxt_script WORKSPACE DATA_DIR [main.py flags, e.g. --xla --dali]"
    fi
    local workspace=${1%/} data=${2%/}
    shift 2
    local cmd=(
        "${RNXT_MPI[@]}" -np "$np" "$RNXT_PYTHON" "$RNXT_MAIN"
        --arch=resnext101-32x4d --mode=train_and_evaluate --iter_unit=epoch
        --num_iter="$epochs" --batch_size="$batch" --warmup_steps=100 --cosine_lr
        --label_smoothing 0.1 --lr_init=0.256 --lr_warmup_epochs=8 --momentum=0.875
        --weight_decay=6.103515625e-05 --weight_init=fan_in "${recipe[@]}"
        --data_dir="$data/tfrecords" --data_idx_dir="$data/dali_idx"
        --results_dir="$workspace/results" "$@"
    )
    if rnxt_dry_run; then
        rnxt_quote "${cmd[@]}"
        return 0
    fi
    rnxt_require_mpi
    exec "${cmd[@]}"
}
