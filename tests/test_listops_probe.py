"""scripts/listops_probe.py: short generated ListOps, each of the three models trained a few updates on the CPU."""
import ast
import re
import sys

import pytest

from script_loader import load_script


@pytest.mark.parametrize('model, overrides', [('metala', ['gate_norm=1.0', 'depth=1']), ('attention', ['depth=2']),
                                              ('gru', [])])  # depth=1 replaces a setting of the recipe
def test_trains_each_model_and_prints_validation_accuracy(model, overrides, monkeypatch, capsys):
    probe = load_script('listops_probe')
    monkeypatch.setattr(sys, 'argv', ['listops_probe.py', '--model', model, '--steps', '3', '--eval-every', '2',
                                      '--train', '64', '--val', '100', '--min-length', '40', '--max-length', '90',
                                      *overrides])
    probe.main()
    out = capsys.readouterr().out
    mean_length = float(re.search(r'64 / 100 expressions, mean length ([\d.]+) tokens', out).group(1))
    assert 40 < mean_length < 90
    assert re.findall(r'step (\d+) ', out) == ['2', '3']  # every --eval-every updates, and the last
    assert all(0 <= float(a) <= 100 for a in re.findall(r'validation accuracy ([\d.]+)%', out))
    if model != 'gru':
        assert str({k: ast.literal_eval(v) for k, v in (o.split("=") for o in overrides)}) in out
