#!/usr/bin/env bash
# The GPU benchmark on a box without network (see README: "GPU speed").
#   bash benchmarks/gpu_box.sh fetch   # where pip reaches an index: wheels the box lacks -> .whl/
#   bash benchmarks/gpu_box.sh run quick|full   # on the box: install them under /tmp/site and run
# Outputs (JSON, log, GPU facts) go to $OUT if set, else the current folder. Each fits one 10-minute call.
# The box is assumed to have Python 3.12 with CUDA torch, transformers, accelerate, safetensors,
# huggingface-hub, aiohttp, pillow and numpy (as this project's rented H200 image does); the wheels
# are what it lacks. PY_VERSION / PLATFORM override the target.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    diffusers==0.42.1 importlib-metadata==10.2.0 zipp discord.py==2.7.1 aiosqlite==0.22.1
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions
)
case "${1:-}" in
fetch)
    python3 -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
        --implementation cp --platform "${PLATFORM:-manylinux_2_28_x86_64}" --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    out="${OUT:-.}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-info.txt"
    python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
    case "${2:-quick}" in
    quick) timeout 200 python3 -m benchmarks.gpu --quick --json "$out/gpu-quick.json" 2>&1 | tee "$out/gpu-quick.log" ;;
    full) timeout 560 python3 -m benchmarks.gpu --json "$out/gpu-full.json" 2>&1 | tee "$out/gpu-full.log" ;;
    *) echo "run quick|full" >&2; exit 2 ;;
    esac
    ;;
*)
    echo "usage: bash benchmarks/gpu_box.sh fetch|run" >&2
    exit 2
    ;;
esac
