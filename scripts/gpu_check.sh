#!/usr/bin/env bash
# One GPU session: the whole test suite on CUDA (compiled Triton kernels; the CUDA-only tests of ops, models and
# the LM included), then the benchmarks named as arguments (ops, models; default both; `none`: the tests alone).
# The environment (the wheels carried in .whl/, PYTHONPATH) comes from scripts/gpu_env.sh.
# Results go to ${OUT:-benchmarks}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks}
BENCHES=${*:-ops models}
source scripts/gpu_env.sh || exit 1
# two threads per xdist worker (unbounded, 8 workers oversubscribe the host's cores and the CPU-path tests crawl);
# a per-test timeout (pytest-timeout) so that a hang prints its traceback instead of eating the session
OMP_NUM_THREADS=2 METALA_AUTOTUNE=0 timeout 480 python3 -m pytest tests -q -p no:cacheprovider -n 8 \
  --timeout 240 -rfE --durations 15 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
for bench in $BENCHES; do
  [ "$bench" = none ] && continue
  python3 "scripts/bench_$bench.py" --out "$OUT/$bench.md" 2>&1 | tee "$OUT/bench_$bench.log"
done
