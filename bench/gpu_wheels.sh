#!/usr/bin/env bash
# Wheels the GPU machine's image lacks, downloaded HERE (the GPU machine reaches no package registry)
# into .whl/ at the repository root, which .git/info/exclude keeps out of git. About 49 MiB, under the
# device tool's 64 MiB for everything it carries. The image already has torch, torchvision, transformers,
# tokenizers, peft, accelerate, onnx, onnxruntime (CPU only), pillow, numpy and nvidia-ml-py.
#   pydantic, pydantic-core, pydantic-settings, python-dotenv, annotated-types, typing-inspection:
#       vicap_jobs.settings (imported through the model registry)
#   bitsandbytes: the int8 engine's CUDA path (bnb-cuda); torchao: its fallback path
# onnxruntime-gpu (~250 MB) does not fit: gpu_bulk.py skips the ONNX engine there and says why.
#
#   bash bench/gpu_wheels.sh            # then: device run "bash bench/gpu_run.sh" with carry [".whl"]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY="${PYTHON:-python3}"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 bitsandbytes==0.50.2 torchao==0.18.0
du -sh .whl
ls .whl
