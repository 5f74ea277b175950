#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the default recipe trained on FER2013 by Keras on JAX
# or PyTorch, on a machine with an NVIDIA GPU, CUDA builds of JAX or PyTorch, Python 3.12, no
# TensorFlow and no package index. Everything it installs is carried beside the code.
#
# Here (after `dvc repro`), once:
#   bash benchmarks/gpu_check.sh --fetch    # gpu_wheels/: keras + the pure-Python pieces, for cp312
#   python benchmarks/gpu_check.py --pack gpu_data
#   du -sh gpu_wheels gpu_data             # with the code, must fit one transfer (64 MiB)
# There:
#   bash benchmarks/gpu_check.sh jax        # or: torch; MINUTES=7 by default
set -euo pipefail
cd "$(dirname "$0")/.."

# Keras 3 and what the training path imports beyond numpy, with their dependencies.
PACKAGES=("keras==3.15.*" "pydantic>=2.7" pyyaml)

if [ "${1:-}" = "--fetch" ]; then
    rm -rf gpu_wheels && mkdir gpu_wheels
    pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --abi abi3 --abi none --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any -d gpu_wheels "${PACKAGES[@]}"
    # numpy is there already (JAX and PyTorch need it), and it is the biggest wheel.
    rm -f gpu_wheels/numpy-*
    du -sh gpu_wheels
    exit 0
fi

backend=${1:-jax}
case "$backend" in jax|torch) ;; *) echo "usage: $0 jax|torch|--fetch" >&2; exit 2 ;; esac
[ -d gpu_wheels ] && [ -d gpu_data ] || { echo "carry gpu_wheels/ and gpu_data/ (see the header)" >&2; exit 2; }
venv=${TMPDIR:-/tmp}/ferops-gpu-venv
# --system-site-packages: the machine's own CUDA builds of JAX/PyTorch (and numpy) stay visible.
python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-index --find-links gpu_wheels "${PACKAGES[@]}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
KERAS_BACKEND=$backend "$venv/bin/python" benchmarks/gpu_check.py --data gpu_data \
    --minutes "${MINUTES:-7}"
