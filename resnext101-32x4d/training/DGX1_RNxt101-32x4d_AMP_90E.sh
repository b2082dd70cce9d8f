#!/usr/bin/env bash
# ResNeXt101-32x4d on DGX-1 (8x V100): 8 processes (one per GPU), 90 epochs,
# batch 128 per GPU, AMP (static loss scale 128).
#
#   bash resnext101-32x4d/training/DGX1_RNxt101-32x4d_AMP_90E.sh \
#       WORKSPACE DATA_DIR [main.py flags, e.g. --xla --dali]
#
# Reads DATA_DIR/tfrecords (and DATA_DIR/dali_idx with --dali), writes WORKSPACE/results.
# The command itself, and PYTHON, BIND_TO, MPIEXEC and DRY_RUN=1: see common.sh.
set -euo pipefail
# shellcheck source=resnext101-32x4d/training/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

rnxt_train 8 90 128 --amp --static_loss_scale 128 -- "$@"
