#!/usr/bin/env bash
# Create the PyTorch peer's virtual environment for benchmarks/bench_vs_timm.py:
# torch + torchvision + timm, in its own venv (never a dependency of the project).
# Default location: .cache/peer-venv in the repository (git-ignored by /.cache/);
# PEER_VENV overrides it. Idempotent: a stamp records what was installed; a second run
# with nothing changed only checks the stamp and that the imports work, then exits.
# Prints the venv's python path on stdout (all logging goes to stderr).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${PEER_VENV:-$repo/.cache/peer-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.peer-stamp"

# torch 2.14.1 + torchvision 0.29.1 install from this machine's package index; torch 2.13
# alone is a CPU build, but PyPI's torchvision does not import beside it, and timm needs
# torchvision. Several GB: the first run takes about 12 minutes.
packages=("torch==2.14.1" "torchvision==0.29.1" "timm==1.0.29")

log() { printf '[peer-env] %s\n' "$*" >&2; }

want=$(printf '%s\n' "${packages[@]}" | cat - "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
check='import torch, torchvision, timm; timm.create_model("resnext101_32x4d", pretrained=False)'
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "$venv/bin/python"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
log "installing ${packages[*]} (several GB from local disk; a few minutes the first time)"
# (pip's notes about this machine's local index pages are dropped; errors still show.)
"$venv/bin/python" -m pip install --disable-pip-version-check -q "${packages[@]}" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
if ! "$venv/bin/python" -c "$check" >/dev/null; then
  log "error: torch/timm do not import in $venv"
  exit 1
fi
echo "$want" >"$stamp"
log "ready: $venv"
echo "$venv/bin/python"
