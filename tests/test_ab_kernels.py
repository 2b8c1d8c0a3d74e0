"""scripts/ab_kernels.py: two versions of the kernels (a git revision and a folder) timed side by side in worker
processes that import each version's own copy; on the CPU under Triton's interpreter (a check, not a timing), on a
GPU compiled (triton 3.6's interpreter, on the GPU machines, cannot run the kernels: a loop over a tensor's range)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'ab_kernels.py'
pytestmark = pytest.mark.skipif(not (REPO / '.git').exists(), reason='needs the git repository (a revision)')


def test_two_versions_side_by_side(tmp_path):
    # 3:20 with stored states (step 2 in two launches on the CPU), 1:20 causal with strong bf16 gates recomputed
    cases = ['3:20:bidir:1', '1:20:causal:200:bf16']
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    out = subprocess.run([sys.executable, str(SCRIPT), 'HEAD', 'kernels', '--device', device, '--rounds', '1',
                          '--cases', *cases, '--check', '--out', str(tmp_path / 'ab.md')], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = (tmp_path / 'ab.md').read_text().splitlines()
    assert lines[0] == '| case | HEAD fwd | HEAD bwd | kernels fwd | kernels bwd | kernels / HEAD fwd | ' \
                       'kernels / HEAD bwd |'
    rows = [line.strip('| ').split(' | ') for line in lines[2:4]]
    assert [row[0] for row in rows] == cases
    assert all(float(cell) > 0 for row in rows for cell in row[1:])
    assert lines[0] in out
    # errors against the PyTorch path: '- case: HEAD err; kernels err', bf16 where q, v (GPU) or dg (bf16 gates) are
    errors = lines[next(i for i, line in enumerate(lines) if line.startswith('Largest')) + 1:]
    assert [line.split(': ')[0] for line in errors if line] == [f'- {case}' for case in cases]
    for case, line in zip(cases, errors):
        tol = 2e-2 if device == 'cuda' or case.endswith('bf16') else 1e-4
        assert all(0 <= float(e.split()[-1]) < tol for e in line.split(': ', 1)[1].split('; ')), line


@pytest.mark.parametrize('case', ['128:197:both:1', '128:197:bidir:1:fp16'])
def test_bad_case_is_named(case):
    result = subprocess.run([sys.executable, str(SCRIPT), 'HEAD', '--cases', case], capture_output=True, text=True)
    assert result.returncode == 2 and f"--cases: '{case}'" in result.stderr


def test_graphs_need_cuda():
    result = subprocess.run([sys.executable, str(SCRIPT), 'HEAD', '--graphs', '--device', 'cpu'], capture_output=True,
                            text=True)
    assert result.returncode == 2 and '--graphs needs --device cuda' in result.stderr
