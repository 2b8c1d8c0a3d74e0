#!/usr/bin/env bash
# One GPU session: the whole test suite on CUDA (compiled Triton kernels; the CUDA-only tests of ops, models and
# the LM included), then the benchmarks named as arguments (ops, models; default both; `none`: the tests alone).
# Wheels missing on the GPU machine (fla 0.6, and transformers >= 5.24 where its image has an older one) may be
# carried in .whl/.
# Results go to ${OUT:-benchmarks}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks}
BENCHES=${*:-ops models}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
mkdir -p /tmp/pkgs && ln -sfn "$PWD/kernels" /tmp/pkgs/metala_kernels
export PYTHONPATH=/tmp/site:/tmp/pkgs:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
# two threads per xdist worker (unbounded, 8 workers oversubscribe the host's cores and the CPU-path tests crawl);
# a per-test timeout (pytest-timeout) so that a hang prints its traceback instead of eating the session
OMP_NUM_THREADS=2 METALA_AUTOTUNE=0 timeout 480 python3 -m pytest tests -q -p no:cacheprovider -n 8 \
  --timeout 240 -rfE --durations 15 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
for bench in $BENCHES; do
  [ "$bench" = none ] && continue
  python3 "scripts/bench_$bench.py" --out "$OUT/$bench.md" 2>&1 | tee "$OUT/bench_$bench.log"
done
