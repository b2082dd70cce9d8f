#!/usr/bin/env bash
# ResNeXt101-32x4d on DGX-2 (16x V100): 16 processes (one per GPU), 250 epochs,
# batch 128 per GPU, AMP (static loss scale 128), MixUp 0.2.
# Port: the original's script launched only 8 processes on this 16-GPU machine.
#
#   bash resnext101-32x4d/training/DGX2_RNxt101-32x4d_AMP_250E.sh \
#       WORKSPACE DATA_DIR [main.py flags, e.g. --xla --dali]
#
# Reads DATA_DIR/tfrecords (and DATA_DIR/dali_idx with --dali), writes WORKSPACE/results.
# The command itself, and PYTHON, BIND_TO, MPIEXEC and DRY_RUN=1: see common.sh.
set -euo pipefail
# shellcheck source=resnext101-32x4d/training/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

rnxt_train 16 250 128 --amp --static_loss_scale 128 --mixup=0.2 -- "$@"
