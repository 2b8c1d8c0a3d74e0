"""scripts/profile_step.py on the CPU: a step is profiled and timed, and the host-time table names the model's ops.
Its numbers are not checked: timings are not tests."""
from pathlib import Path

import pytest
import torch

from script_loader import load_script

profile_step = load_script('profile_step')
LISTOPS_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'lra' / 'listops.yaml'


def test_profiles_a_training_step(one_thread):
    case = profile_step.vit_case('metala_vit_t_p4_32', res=32, batch=2, device='cpu', depth=1, embed_dim=64,
                                 num_heads=2)
    r = profile_step.profile_step(*case, steps=1, device='cpu')
    assert r['wall_ms'] > 0 and r['profiled_ms'] > 0
    assert r['kernel_ms'] == 0 and r['by_device'] == ''  # no CUDA kernels on the CPU
    assert 'aten::mm' in r['by_host'] and 'Optimizer.step#AdamW.step' in r['by_host']


def test_profiles_the_lra_classifier_of_a_config(one_thread):
    """The ListOps classifier as scripts/lra.py builds it (made small by overrides), on a padded, masked batch."""
    model, (ids, mask), labels = profile_step.lra_case(str(LISTOPS_CONFIG), ['depth=1', 'dim=32', 'num_heads=1',
                                                                             'batch_size=2', 'max_len=64'], 'cpu')
    assert ids.shape == mask.shape == (2, 64) and mask.dtype == torch.bool and labels.shape == (2,)
    assert len(model.blocks) == 1 and mask.sum(1).min() >= 16
    r = profile_step.profile_step(model, (ids, mask), labels, steps=1, device='cpu')
    assert r['wall_ms'] > 0 and 'Optimizer.step#AdamW.step' in r['by_host']


def test_compiles_the_lra_classifier_where_the_config_says(one_thread):
    overrides = ['depth=1', 'dim=32', 'num_heads=1', 'batch_size=2', 'max_len=64']
    eager, _, _ = profile_step.lra_case(str(LISTOPS_CONFIG), overrides, 'cpu')
    compiled, _, _ = profile_step.lra_case(str(LISTOPS_CONFIG), overrides + ['torchcompile=eager'], 'cpu')
    assert eager._compiled_call_impl is None and compiled._compiled_call_impl is not None


@pytest.mark.parametrize('mode, cfg', [(None, dict(torchcompile=None, torchcompile_mode=None)),
                                       ('default', dict(torchcompile='inductor', torchcompile_mode=None)),
                                       ('reduce-overhead', dict(torchcompile='inductor',
                                                                torchcompile_mode='reduce-overhead'))])
def test_compiles_the_models_in_the_mode_given(mode, cfg, monkeypatch, one_thread):
    """--compile MODE: the timm model compiled in place with inductor in that mode ('default': torch.compile's own);
    eager without it (compile_in_place stubbed: inductor on the CPU takes minutes)."""
    seen = []
    monkeypatch.setattr(profile_step, 'compile_in_place', lambda model, cfg, logger: seen.append((model, cfg)))
    model, _, _ = profile_step.vit_case('metala_vit_t_p4_32', res=32, batch=2, device='cpu', compile_mode=mode,
                                        depth=1)
    assert seen == [(model, cfg)]
