"""scripts/bench_ops.py's table (the timing itself needs a GPU): every cell in its column, and the columns that
were not measured (fla's, with --no-fla) printed as '-'."""
import math

import pytest

from script_loader import load_script

bench_ops = load_script('bench_ops')


@pytest.mark.parametrize('fla', [(0.6, 2.4), (float('nan'), float('nan'))])
def test_table_columns(fla):
    row = dict(B=256, T=197, H=6, K=32, V=64, err=3.7e-3, floor=0.027, ours=(0.275, 1.438), sdpa=(0.125, 0.667),
               fla_bi=fla, causal=(0.2, 1.25), fla_causal=fla)
    header, rule, line = bench_ops.table([row]).split('\n')
    cells = dict(zip(header.strip('| ').split(' | '), line.strip('| ').split(' | ')))
    assert len(cells) == 19 and rule == '|' + '---|' * 19
    assert cells['ours fwd+bwd'] == '1.438' and cells['ours/SDPA fwd+bwd'] == '2.16'
    assert cells['max rel err'] == '3.7e-03'
    if not math.isnan(fla[0]):
        assert cells['fla 2-pass fwd+bwd'] == '2.400' and cells['fla/ours fwd+bwd'] == '1.7'
        assert cells['ours/fla causal'] == '0.52'
    else:
        assert [cells[c] for c in ('fla 2-pass fwd', 'fla 2-pass fwd+bwd', 'fla/ours fwd+bwd', 'fla chunk_gla fwd+bwd',
                                   'ours/fla causal')] == ['-'] * 5


def test_each_measurement_is_reported_as_it_ends(monkeypatch, capsys):
    """A run cut short by a time limit still says what it measured and how long each took (the timer stubbed: it
    needs a GPU)."""
    import torch
    calls = []
    monkeypatch.setattr(bench_ops, 'bench', lambda fn, grad_of=(), graphs=False: calls.append(fn()) or 0.5)
    x = torch.randn(3, requires_grad=True)
    assert bench_ops.fwd_and_train(lambda x: x * 2, (x,), name='B 1 T 3, stub') == (0.5, 0.5)
    assert len(calls) == 2 and x.grad is not None
    err = capsys.readouterr().err
    assert err.startswith('B 1 T 3, stub: fwd 0.500 ms, fwd+bwd 0.500 ms (') and err.endswith(' s to measure)\n')
    bench_ops.fwd_and_train(lambda x: x * 2, (x,))
    assert capsys.readouterr().err == ''
