#!/usr/bin/env bash
# ResNeXt101-32x4d on DGX-2 (16x V100): 16 processes (one per GPU), 90 epochs,
# batch 64 per GPU, FP32.
#
#   bash resnext101-32x4d/training/DGX2_RNxt101-32x4d_FP32_90E.sh \
#       WORKSPACE DATA_DIR [main.py flags, e.g. --xla --dali]
#
# Reads DATA_DIR/tfrecords (and DATA_DIR/dali_idx with --dali), writes WORKSPACE/results.
# The command itself, and PYTHON, BIND_TO, MPIEXEC and DRY_RUN=1: see common.sh.
set -euo pipefail
# shellcheck source=resnext101-32x4d/training/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

rnxt_train 16 90 64 -- "$@"
