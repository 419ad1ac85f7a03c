#!/usr/bin/env bash
# bench/gpu_bulk.py on a lent GPU machine, as one command for the device tool; results land in $OUT.
#
# Here first: bash bench/gpu_wheels.sh   (the wheels the GPU image lacks, into .whl/)
# Then:       device run, command "bash bench/gpu_run.sh", carry [".whl"], timeout_s 540
# Back here:  cp <files_at>/gpu_bulk.json bench/results/gpu_bulk.json
#
# The machine has no registry access: it runs the image's python3 (torch, torchvision, transformers,
# onnxruntime) with the repository's src/ on PYTHONPATH and the carried wheels installed to /tmp/site.
# gpu_bulk.py stops starting variants after GPU_BULK_BUDGET seconds (default 330) and rewrites its JSON
# after every variant, so even a run cut short by the timeout leaves the variants it finished.
# Extra arguments go to gpu_bulk.py (e.g. --n-images 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-bulk-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "torchvision", torchvision.__version__)'
  "$PY" -c 'import vicap_jobs.models.registry, vicap_jobs.data.gpu_decode; print("vicap_jobs imports")' \
    || echo "vicap_jobs does not import: were the wheels carried (bash bench/gpu_wheels.sh; carry .whl)?"
} 2>&1 | tee "$OUT/preflight.txt"
status=0
timeout --signal=INT --kill-after=30 "${GPU_BULK_TIMEOUT:-480}" \
  "$PY" bench/gpu_bulk.py --budget-s "${GPU_BULK_BUDGET:-330}" --work-dir /tmp/gpu-bulk-work \
  --out "$OUT/gpu_bulk.json" "$@" 2>&1 | tee "$OUT/gpu_bulk.log" || status=$?
ls -la "$OUT"
exit "$status"
