# Sourced on the GPU machine before any of our scripts: `source scripts/gpu_env.sh && python3 scripts/ab_kernels.py
# main kernels`.  Installs the wheels carried in .whl/ (those its image lacks: fla 0.6, transformers >= 5.24) into
# /tmp/site, makes kernels/ importable as metala_kernels, and exports PYTHONPATH for every later command of the shell
# (a command without it imports neither: session 14 lost a benchmark so).
cd "$(dirname "${BASH_SOURCE[0]}")/.." || return 1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
fi
mkdir -p /tmp/pkgs && ln -sfn "$PWD/kernels" /tmp/pkgs/metala_kernels
export PYTHONPATH=/tmp/site:/tmp/pkgs:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
