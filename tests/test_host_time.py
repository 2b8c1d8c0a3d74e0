"""scripts/host_time.py: Triton's launch path under a stand-in driver (no GPU) and the launches a call makes."""
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / 'scripts'
ENV = {name: value for name, value in os.environ.items() if name not in ('TRITON_INTERPRET', 'METALA_AUTOTUNE')}

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
                     ('2', '1024', '1'): ['carried', '4', '10'],  # 2 (S, R) + 2 step 2; 4 (S, dS, R, dR) + 2
                     ('2', '8192', '1'): ['combined', '5', '12']}
    assert all(float(us) > 0 for row in rows.values() for us in row[3:])
    causal = table('--shapes', '2:1024:1', '--widths', '16:32', '--sms', '32', '--causal')
    assert causal[('2', '1024', '1')][:3] == ['carried', '3', '7']
