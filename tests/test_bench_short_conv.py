"""scripts/bench_short_conv.py on the CPU (the kernels under Triton's interpreter: a check of the script, not a
timing): a row per implementation and case, the kernels' errors against the PyTorch path."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'bench_short_conv.py'


def test_rows_and_errors(tmp_path):
    cases = ['2:3:5:16', '1:9:4:40']
    subprocess.run([sys.executable, str(SCRIPT), '--device', 'cpu', '--cases', *cases, '--configs', '32:32:4', '64:16:2',
                    '--out', str(tmp_path / 'conv.md')], capture_output=True, text=True, check=True)
    lines = (tmp_path / 'conv.md').read_text().splitlines()
    rows = [line.strip('| ').split(' | ') for line in lines if line.startswith('| ') and line[2].isdigit()]
    assert [(row[0], row[1], row[2]) for row in rows] == [('2', '3x5', '16')] * 4 + [('1', '9x4', '40')] * 4
    assert [row[3] for row in rows[:4]] == ['PyTorch (cuDNN)', 'PyTorch (cuDNN, benchmark)',
                                            'Triton, 32:32:4', 'Triton, 64:16:2']
    assert all(float(row[4]) > 0 and float(row[5]) > 0 for row in rows)
    assert all(row[8] == '-' for row in rows if row[3].startswith('PyTorch'))
    assert all(0 <= float(row[8]) < 1e-5 for row in rows if row[3].startswith('Triton'))


def test_bad_case_is_named():
    result = subprocess.run([sys.executable, str(SCRIPT), '--device', 'cpu', '--cases', '2:3:5'], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "'2:3:5' is not B:GH:GW:C" in result.stderr
