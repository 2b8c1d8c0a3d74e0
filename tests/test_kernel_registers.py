"""scripts/kernel_registers.py compiles every kernel variant for sm_90 (no GPU needed) and reports its resources."""
import collections
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'kernel_registers.py'


def test_reports_every_kernel_variant():
    out = subprocess.run([sys.executable, str(SCRIPT), '--widths', '16:32'], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.strip('|').split('|') for line in out.splitlines() if line.startswith('| ') and '---' not in line]
    header, rows = rows[0], rows[1:]
    assert [c.strip() for c in header][-4:] == ['registers', 'spill bytes', 'shared bytes', 'SASS instructions']
    # states x3 (4 and 8 warps each), combine (4), output x6 (4 warps capped at 128 registers and not, 8), backward x6
    # (8): output and backward in both modes, in their two launches with the states stored and their one with the
    # states recomputed
    assert len(rows) == 31
    instructions, caps = {}, collections.defaultdict(list)
    for row in rows:
        name, warps, cap = row[0].strip(), int(row[4]), row[5].strip()
        registers, spills, shared, instructions[name, warps, cap] = (int(c) for c in row[-4:])
        assert 16 <= registers <= 255 and spills >= 0, row
        assert shared > 0 or 'combine' in name, row  # every kernel but the combine stages tl.dot tiles
        caps[name].append(cap)
        assert cap == '-' or registers <= int(cap), row
    # the output kernel at 4 warps as OUT_CONFIGS launch it, uncapped and capped, and at 8 uncapped; no other cap
    assert all(launches == (['-', '128', '-'] if name.startswith('output') else ['-'] * len(launches))
               for name, launches in caps.items()), caps
    # the first launch of step 2 is compiled without the per-key path: far less code than the second
    for kernel, warps in (('output', 4), ('output', 8), ('backward', 8)):
        for mode in ('bidirectional', 'causal'):
            fast, slow = (instructions[f'{kernel}, {mode}, {paths} launch', warps, '-'] for paths in ('fast', 'slow'))
            assert 0 < fast < 0.8 * slow, (kernel, mode, warps, fast, slow)
