#!/usr/bin/env bash
# Write the DALI index files for the TFRecords of an ImageNet data directory (the
# original's utils/dali_index.sh): for every train-* and validation-* file in SRC_DIR,
# DST_DIR/<same name> with one "offset size" line per record, what DALI's TFRecord reader (--dali with
# --data_idx_dir DST_DIR) needs.
#
#   bash utils/dali_index.sh [-j N] [--tfrecord2idx] SRC_DIR DST_DIR
#
# By default the indexing is done by utils/tools/dali_index.py (pure Python, same format as
# DALI's tfrecord2idx byte for byte, N files at a time, default all CPUs), which skips
# index files that are already up to date. --tfrecord2idx runs DALI's own tfrecord2idx
# script on every file instead, as the original did (it imports TensorFlow: seconds per
# file), N at a time; each index it writes is checked to end where its record file ends.
# Either way every index file is written under a temporary name and renamed into place.
#
# Environment: PYTHON, the interpreter (default: the repository's .venv/bin/python, else
# python3); TFRECORD2IDX, the tfrecord2idx script (default: on PATH, else next to PYTHON).
set -euo pipefail

usage() {
    echo "usage: bash utils/dali_index.sh [-j N] [--tfrecord2idx] SRC_DIR DST_DIR" >&2
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jobs=$(nproc 2>/dev/null || echo 1)
use_tfrecord2idx=0
while [[ $# -gt 0 ]]; do
    case $1 in
        -j) [[ $# -ge 2 ]] || usage; jobs=$2; shift 2 ;;
        -j*) jobs=${1#-j}; shift ;;
        --tfrecord2idx) use_tfrecord2idx=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "error: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[[ $# -eq 2 ]] || usage
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "error: -j needs a positive number, not '$jobs'" >&2; exit 2; }
src_dir=$1
dst_dir=$2
[[ -d $src_dir ]] || { echo "error: $src_dir: no such directory" >&2; exit 1; }

# shellcheck source=scripts/python.sh
source "$here/../scripts/python.sh"
python=$(rnxt_python "$here/..")

if [[ $use_tfrecord2idx -eq 0 && -f $here/tools/dali_index.py ]] && command -v "$python" >/dev/null; then
    echo "Creating DALI index files for $src_dir in $dst_dir ($jobs processes)..."
    PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" \
        exec "$python" -m utils.tools.dali_index -j "$jobs" "$src_dir" "$dst_dir"
fi

# DALI's tfrecord2idx, one process per file, at most $jobs at a time.
tfrecord2idx=${TFRECORD2IDX:-}
if [[ -z $tfrecord2idx ]]; then
    if command -v tfrecord2idx >/dev/null; then
        tfrecord2idx=$(command -v tfrecord2idx)
    elif [[ -x $(dirname "$python")/tfrecord2idx ]]; then
        tfrecord2idx=$(dirname "$python")/tfrecord2idx
    else
        echo "error: DALI's tfrecord2idx is not on PATH (install nvidia-dali, or set TFRECORD2IDX)" >&2
        exit 1
    fi
fi

shopt -s nullglob
files=("$src_dir"/train-* "$src_dir"/validation-*)
shopt -u nullglob
if [[ ${#files[@]} -eq 0 ]]; then
    echo "error: $src_dir has no train-* or validation-* files to index" >&2
    exit 1
fi
mkdir -p "$dst_dir"
if [[ $src_dir -ef $dst_dir ]]; then  # index files take their record files' names
    echo "error: $dst_dir: the index directory must not be the data directory" >&2
    exit 1
fi

# Succeeds when the index's last "offset size" line is a whole record (its size is the
# record's 8-byte length field + 16) that ends where the record file ends. tfrecord2idx
# does not notice a file cut inside its last record, so the length field is read here.
index_covers() {
    local record=$1 index=$2 size last length
    size=$(stat -c %s "$record")
    last=$(tail -n 1 "$index")
    if [[ -z $last ]]; then
        [[ $size -eq 0 ]]
        return
    fi
    [[ $last =~ ^([0-9]+)\ ([0-9]+)$ ]] || return 1
    length=$(od -An -t u8 -j "${BASH_REMATCH[1]}" -N 8 "$record" | tr -d ' ')
    [[ -n $length ]] || return 1
    [[ $((BASH_REMATCH[2])) -eq $((length + 16)) ]] || return 1
    [[ $((BASH_REMATCH[1] + BASH_REMATCH[2])) -eq $size ]]
}

# Runs in a subshell, so the trap removes this file's temporary index on any exit.
index_one() (
    local record=$1 index tmp
    index=$dst_dir/$(basename "$record")
    tmp=$(mktemp "$dst_dir/.$(basename "$record").XXXXXX.tmp")
    trap 'rm -f "$tmp"' EXIT
    echo "Creating index file for $record -> $index..."
    TF_CPP_MIN_LOG_LEVEL=3 "$tfrecord2idx" "$record" "$tmp" >/dev/null
    if ! index_covers "$record" "$tmp"; then
        echo "error: $record: not a complete TFRecord file; no index written" >&2
        exit 1
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$index"
)

failed=0
running=0
for record in "${files[@]}"; do
    [[ -f $record ]] || continue
    index_one "$record" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while [[ $running -gt 0 ]]; do
    wait -n || failed=1
    running=$((running - 1))
done
if [[ $failed -ne 0 ]]; then
    echo "error: some index files were not written (see above)" >&2
    exit 1
fi
echo "Indexed ${#files[@]} file(s) into $dst_dir with tfrecord2idx."
