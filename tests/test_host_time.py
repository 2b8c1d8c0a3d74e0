"""scripts/host_time.py: Triton's launch path under a stand-in driver (no GPU), the launches a call makes, and our
autotuning launcher, which tunes a kernel variant once and then hands its config straight to the kernel."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / 'scripts'
ENV = {name: value for name, value in os.environ.items() if name not in ('TRITON_INTERPRET', 'METALA_AUTOTUNE')}

TUNE_ONCE = '''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from host_time import stand_in_driver
from triton.runtime.autotuner import Autotuner
tunes = []
tune = Autotuner.run
Autotuner.run = lambda tuner, *args, **kw: (tunes.append(tuner.base_fn.__name__), tune(tuner, *args, **kw))[1]
from metala_kernels import chunk
fastest = lambda config: 0.5 if (config.num_warps, config.num_stages) == (8, 2) else 1.0
with stand_in_driver(fastest) as launched:
    for dtype in (torch.bfloat16, torch.bfloat16, torch.float16, torch.bfloat16, torch.float16):
        x, y = torch.zeros(2, 70, 1, 32, dtype=dtype), torch.zeros(2, 70, 1, 64, dtype=dtype)
        g, states = torch.zeros(2, 70, 1, 32), torch.zeros(2, 1, 2, 32, 64, dtype=dtype)
        chunk._states((1, 2), x, g, g, y, y, states, states, torch.zeros(3, dtype=torch.int32), 70, 1.0,
                      BIDIR=False, X_IS_Q=False, DIRS=1, FIRST=0, CARRY=True, QS=32, VS=64, H=1, K=32, V=64, BT=64,
                      PREC='tf32')
print(json.dumps(dict(tunes=tunes, launched=[(k.options.num_warps, k.options.num_stages) for k in launched])))
'''


def test_launcher_tunes_each_variant_once_then_launches_its_config():
    out = subprocess.run([sys.executable, '-c', TUNE_ONCE, str(SCRIPTS)], env=ENV, capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out.splitlines()[-1])
    assert result['tunes'] == ['_metala_states_kernel'] * 2  # bf16 and fp16: two variants, each tuned once
    assert result['launched'] == [[8, 2]] * 5  # every launch with the fastest config, tuned or not


def table(*args):
    out = subprocess.run([sys.executable, str(SCRIPTS / 'host_time.py'), '--calls', '2', '--rounds', '1', *args],
                         env=ENV, capture_output=True, text=True, check=True).stdout
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in out.splitlines() if line.startswith('| ')]
    assert rows[0][3:] == ['states', 'launches fwd', 'launches fwd+bwd', 'host us fwd', 'host us fwd+bwd']
    return {tuple(row[:3]): row[3:] for row in rows[1:]}


def test_host_time_counts_each_paths_launches():
    # 32 SMs: 2 x 1 (batch, head) pairs recompute 4 chunks' states; 1024 tokens (16 chunks) carry them; 8,192 tokens
    # (128 chunks) with 2 pairs, fewer than 2 an SM, combine the chunks' terms (one launch more a step 1)
    rows = table('--shapes', '2:197:1', '2:1024:1', '2:8192:1', '--widths', '16:32', '--sms', '32')
    paths = {shape: row[:3] for shape, row in rows.items()}
    assert paths == {('2', '197', '1'): ['recomputed', '1', '2'],  # one launch a forward, one a backward
                     ('2', '1024', '1'): ['carried', '3', '7'],  # 1 (S with R) + 2 step 2; 2 (S, R; dS, dR) + 2
                     ('2', '8192', '1'): ['combined', '4', '9']}
    assert all(float(us) > 0 for row in rows.values() for us in row[3:])
    causal = table('--shapes', '2:1024:1', '--widths', '16:32', '--sms', '32', '--causal')
    assert causal[('2', '1024', '1')][:3] == ['carried', '3', '7']
