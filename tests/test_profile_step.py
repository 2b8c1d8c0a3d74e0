"""scripts/profile_step.py on the CPU: a step is profiled and timed, and the host-time table names the model's ops.
Its numbers are not checked: timings are not tests."""
from script_loader import load_script

profile_step = load_script('profile_step')


def test_profiles_a_training_step(one_thread):
    r = profile_step.profile_step('metala_vit_t_p4_32', res=32, batch=2, steps=1, device='cpu', depth=1,
                                  embed_dim=64, num_heads=2)
    assert r['wall_ms'] > 0 and r['profiled_ms'] > 0
    assert r['kernel_ms'] == 0 and r['by_device'] == ''  # no CUDA kernels on the CPU
    assert 'aten::mm' in r['by_host'] and 'Optimizer.step#AdamW.step' in r['by_host']
