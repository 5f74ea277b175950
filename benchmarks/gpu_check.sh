#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the default recipe trained on FER2013 by Keras on JAX
# or PyTorch, on a machine with an NVIDIA GPU, CUDA builds of JAX or PyTorch, Python 3.12, no
# TensorFlow and no package index. Everything it installs is carried beside the code.
#
# Here (after `dvc repro`), once:
#   bash benchmarks/gpu_check.sh --fetch            # gpu_wheels/: keras + the pure-Python pieces, cp312
#   python benchmarks/gpu_check.py --pack gpu_data  # gpu_data/: the prepared splits, packed losslessly
#   du -sh gpu_wheels gpu_data
# There: one call carrying both folders when code + wheels + data fit one transfer, or two calls
# on the same (warm) machine, since the virtual environment stays in .gpu-venv/ between calls:
#   bash benchmarks/gpu_check.sh install            # carries gpu_wheels/
#   bash benchmarks/gpu_check.sh jax                # carries gpu_data/ (or: torch); MINUTES=7
set -euo pipefail
cd "$(dirname "$0")/.."

# Keras 3 and what the training path imports beyond numpy, with their dependencies.
PACKAGES=("keras==3.15.*" "pydantic>=2.7" pyyaml)
venv=.gpu-venv

case "${1:-}" in
--fetch)
    rm -rf gpu_wheels && mkdir gpu_wheels
    pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --abi abi3 --abi none --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any -d gpu_wheels "${PACKAGES[@]}"
    # numpy is there already (JAX and PyTorch need it), and it is the biggest wheel.
    rm -f gpu_wheels/numpy-*
    du -sh gpu_wheels
    ;;
install)
    [ -d gpu_wheels ] || { echo "carry gpu_wheels/ (see the header)" >&2; exit 2; }
    # --system-site-packages: the machine's own CUDA builds of JAX/PyTorch (and numpy) stay visible.
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --no-index --find-links gpu_wheels "${PACKAGES[@]}"
    "$venv/bin/python" -c "import keras, pydantic, yaml; print('keras', keras.__version__)"
    ;;
jax|torch)
    [ -x "$venv/bin/python" ] || "$0" install
    [ -d gpu_data ] || { echo "carry gpu_data/ (see the header)" >&2; exit 2; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    KERAS_BACKEND=$1 "$venv/bin/python" benchmarks/gpu_check.py --data gpu_data --minutes "${MINUTES:-7}"
    ;;
*)
    echo "usage: $0 --fetch | install | jax | torch" >&2
    exit 2
    ;;
esac
