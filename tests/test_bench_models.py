"""scripts/bench_models.py on the CPU (--device cpu): the models of a pair take turns, and the table and plot are
written.  Its numbers are not checked: timings are not tests."""
import json
import math
import subprocess
import sys
from types import SimpleNamespace

from script_loader import SCRIPTS, load_script

SCRIPT = SCRIPTS / 'bench_models.py'
bench_models = load_script('bench_models')


def test_pair_timings_take_turns(monkeypatch, one_thread):
    timed = []
    seconds = bench_models.Bench.seconds

    def logged(self, kind, iters):
        timed.append((self.row['model'], kind, iters))
        return seconds(self, kind, iters)

    monkeypatch.setattr(bench_models.Bench, 'seconds', logged)
    monkeypatch.setattr(bench_models, 'WARMUP_STEPS', 1)
    pair = bench_models.PAIRS['t']
    rows = bench_models.measure_pair(pair, 32, 2, 'cpu', batches=(4, 4))
    warmups = [(name, kind, 1) for name in pair for kind in ('infer', 'train')]  # one built after the other
    rounds = [(name, kind, 2) for kind in ('infer', 'train') for _ in range(bench_models.TIMINGS) for name in pair]
    assert timed == warmups + rounds
    assert [row['model'] for row in rows] == list(pair)
    assert all(row[f'{kind}_img_s'] > 0 and row[f'{kind}_batch'] == 4 for row in rows for kind in ('infer', 'train'))


def test_writes_the_table_json_and_plot(tmp_path):
    out = tmp_path / 'bench' / 'models.md'  # a folder that does not exist yet
    subprocess.run([sys.executable, str(SCRIPT), '--device', 'cpu', '--pairs', 't', '--res', '32', '--batch', '4',
                    '4', '--iters', '1', '--out', str(out)], check=True, capture_output=True)
    table = out.read_text()
    assert '| T | 32 | 4 |' in table and 'take turns' in table
    assert table.rstrip().endswith('| - / - (-) |')  # no memory figures on the CPU
    assert [row['model'] for row in json.loads(out.with_suffix('.json').read_text())['rows']] == list(
        bench_models.PAIRS['t'])
    subprocess.run([sys.executable, str(SCRIPT), '--plot-only', '--out', str(out)], check=True, capture_output=True)
    assert out.with_suffix('.png').stat().st_size > 0


def test_no_memory_figures_under_cuda_graphs():
    """Under mode 'reduce-overhead' the allocator's peak reads too little: nan, returned before any CUDA call."""
    bench = SimpleNamespace(device='cuda', compile_mode='reduce-overhead')
    assert math.isnan(bench_models.Bench.peak_gib(bench, 'train', 0))


def test_gflops_count_deits_attention():
    """DeiT-T's count includes its attention products, 2 * 2 * T^2 * D a block (T = 197 tokens, D = 192), beside
    the linears' 2 * 12 * D^2 a token a block and the patch embedding."""
    T, D, depth = 197, 192, 12
    linears = depth * T * 2 * 12 * D * D + 196 * 2 * 3 * 16 * 16 * D + 2 * D * 1000
    attention = depth * 2 * 2 * T * T * D
    assert abs(bench_models.gflops_at_224('deit_tiny_patch16_224') * 1e9 / (linears + attention) - 1) < 1e-3


def test_ours_kwargs_reach_our_models_only(tmp_path):
    """--ours-kwargs go to create_model for the metala_vit models (e.g. backend='triton'), not to DeiT, and the table
    says so."""
    model = bench_models.create('metala_vit_t', 32, dict(backend='triton'))
    assert {m.backend for m in model.modules() if hasattr(m, 'backend')} == {'triton'}
    assert bench_models.create('deit_tiny_patch16_224', 32, dict(backend='triton')) is not None
    out = tmp_path / 'models.md'
    subprocess.run([sys.executable, str(SCRIPT), '--device', 'cpu', '--pairs', 't', '--res', '32', '--batch', '2',
                    '2', '--iters', '1', '--ours-kwargs', 'self_aug=False', '--out', str(out)], check=True,
                   capture_output=True)
    assert 'ours built with self_aug=False;' in out.read_text()
    assert json.loads(out.with_suffix('.json').read_text())['ours_kwargs'] == {'self_aug': False}
