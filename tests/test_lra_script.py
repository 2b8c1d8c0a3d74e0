"""scripts/lra.py on tiny CPU runs: generated ListOps and Pathfinder, exact resume (at an epoch end and mid-epoch
after a time-budget stop), --eval-only, bad input.

The reference runs go through subprocesses (`python scripts/lra.py --cpu`, and `accelerate launch --cpu` for the
stopped run), one thread each (OMP_NUM_THREADS=1); the other checks call main() in this process, on one thread too,
so that their numbers can be compared with the subprocesses' exactly. The data are generated once per module (250
ListOps expressions: 240 / 5 / 5; 100 Pathfinder images: 80 / 10 / 10) and every sequence is cut to 64 tokens.
"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metala_vision.data.lra import build_lra_datasets
from metala_vision.training import CheckpointDir, read_jsonl
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'lra.py'
DEBUG_CONFIG = str(REPO / 'configs/lra/debug.yaml')
MAX_LEN = 64
BATCH = 16
LISTOPS = dict(num_examples=250, batches=15)  # 240 training expressions / 16
PATHFINDER = dict(num_examples=100, batches=5)  # 80 training images / 16
EPOCHS = 3


lra_script = load_script('lra')


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    """Generated ListOps and Pathfinder sets, made here once so that the runs below only read them."""
    root = tmp_path_factory.mktemp('lra_cache')
    for task, sizes in (('listops', LISTOPS), ('pathfinder', PATHFINDER)):
        build_lra_datasets(task, cache_dir=root, num_examples=sizes['num_examples'], num_workers=1)
    return root


def _args(task, output, cache_dir, *extra):
    sizes = LISTOPS if task == 'listops' else PATHFINDER
    return ['--task', task, '--config', DEBUG_CONFIG, '--output', str(output), '--cache-dir', str(cache_dir),
            f"num_examples={sizes['num_examples']}", f'max_len={MAX_LEN}', f'batch_size={BATCH}',
            f'epochs={EPOCHS}', 'log_interval=1', *extra]


def _command(args, launcher='python'):
    if launcher == 'accelerate':
        return [sys.executable, '-m', 'accelerate.commands.launch', '--cpu', '--num_processes', '1',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(SCRIPT), *args]
    return [sys.executable, str(SCRIPT), '--cpu', *args]


def _start(command):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f'{proc.args}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}'
    return out


def _events(output, event):
    return [r for r in read_jsonl(Path(output) / 'log.jsonl') if r['event'] == event]


def _checkpoint_names(output):
    return [p.name for p in CheckpointDir(Path(output) / 'checkpoints').complete()]


@pytest.fixture(scope='module')
def listops_runs(cache_dir, tmp_path_factory):
    """The reference ListOps run (three epochs) and, alongside, the same run stopped after two epochs (through
    accelerate launch); returns (reference folder, its stdout, stopped run's folder)."""
    root = tmp_path_factory.mktemp('listops')
    full, part = root / 'full', root / 'part'
    runs = [_start(_command(_args('listops', full, cache_dir))),
            _start(_command(_args('listops', part, cache_dir, f"stop_after_updates={2 * LISTOPS['batches']}"),
                            'accelerate'))]
    full_out, _ = (_finish(proc) for proc in runs)
    return full, full_out, part


def _steps(output, after=0):
    return [(r['update'], r['loss'], r['lr']) for r in _events(output, 'train') if r['update'] > after]


def test_listops_trains_resumes_exactly_and_evaluates(listops_runs, cache_dir, capsys, one_thread):
    updates = LISTOPS['batches']
    full, full_out, part = listops_runs
    epochs = _events(full, 'epoch')
    steps = _events(full, 'train')
    assert [r['update'] for r in epochs] == [updates * (i + 1) for i in range(EPOCHS)]
    assert [r['update'] for r in steps] == list(range(1, EPOCHS * updates + 1))
    losses = [r['train_loss'] for r in epochs]
    # it learns: the loss falls every epoch, below the uniform guess's log(10) (ListOps' label frequencies alone
    # give 2.245 on these 240 expressions)
    assert losses[0] > losses[1] > losses[2] and losses[2] < math.log(10) - 0.03, losses
    assert epochs[0]['train_tokens'] <= updates * BATCH * MAX_LEN  # every sequence cut to max_len
    assert _events(full, 'data')[0]['max_len'] == MAX_LEN
    assert all(r['train_tokens_per_s'] > 0 and r['peak_mem_gib'] is None for r in epochs)
    assert [r['lr'] for r in steps][updates - 1] == pytest.approx(3e-3)  # warmup over epoch 1 to the peak lr
    assert _checkpoint_names(full) == [f'checkpoint-{updates * i:09d}' for i in (2, 3)]  # keep_checkpoints: 2
    best = full / 'best' / 'model.safetensors'
    assert best.is_file()
    test = _events(full, 'test')[0]
    assert test['test_count'] == 5 and test['best_val_acc'] == max(r['val_acc'] for r in epochs)
    assert f"test accuracy {test['test_acc']:.2f}%" in full_out

    # the stopped run, resumed: it starts epoch 3 from the saved state and repeats the reference exactly
    assert _checkpoint_names(part) == [f'checkpoint-{updates * i:09d}' for i in (1, 2)]
    assert _events(part, 'stop')[0]['reason'] == 'stop_after_updates'
    _finish(_start(_command(_args('listops', part, cache_dir, '--resume', 'auto'))))
    resume = _events(part, 'resume')[0]
    assert (resume['epoch'], resume['batch'], resume['update']) == (2, 0, 2 * updates)
    assert (resume['best_metric'], resume['best_epoch']) == (epochs[1]['best_val_acc'], epochs[1]['best_epoch'])
    assert _steps(part, after=2 * updates) == _steps(full, after=2 * updates)
    keys = ('epoch', 'update', 'train_loss', 'val_loss', 'val_acc', 'best_val_acc', 'best_epoch')
    assert [{k: r[k] for k in keys} for r in _events(part, 'epoch')] == [{k: r[k] for k in keys} for r in epochs]
    assert [{k: v for k, v in r.items() if k != 'time'} for r in _events(part, 'test')][-1] == \
        {k: v for k, v in test.items() if k != 'time'}
    weights, resumed_weights = load_file(best), load_file(part / 'best' / 'model.safetensors')
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)

    # --eval-only on the best weights gives the logged test result (settings from the file's metadata)
    capsys.readouterr()
    assert lra_script.main(['--eval-only', '--checkpoint', str(best), '--cpu']) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics['test_count'] == 5 and metrics['val_count'] == 5
    assert metrics['test_acc'] == test['test_acc']
    assert metrics['test_loss'] == pytest.approx(test['test_loss'], rel=1e-5)
    assert metrics['val_acc'] == test['best_val_acc']


def test_time_budget_stops_mid_epoch_and_resumes(listops_runs, cache_dir, tmp_path, capsys, one_thread):
    full = listops_runs[0]
    output = tmp_path / 'budget'
    # a budget of 0 minutes ends training at the first check: after update 1 (log_interval=1)
    assert lra_script.main(['--cpu', *_args('listops', output, cache_dir), '--max-minutes', '0']) == 0
    partial = _events(output, 'partial_epoch')
    assert len(partial) == 1 and (partial[0]['epoch'], partial[0]['batch'], partial[0]['update']) == (1, 1, 1)
    assert _events(output, 'stop')[0]['reason'] == 'max_minutes'
    assert _checkpoint_names(output) == ['checkpoint-000000001']
    assert _events(output, 'test')[0]['best_epoch'] == 1 and (output / 'best' / 'model.safetensors').is_file()
    assert 'listops: test accuracy' in capsys.readouterr().out
    # resumed within epoch 1 (skipping the trained batch), the training repeats the reference's
    assert lra_script.main(['--cpu', *_args('listops', output, cache_dir), '--resume', 'auto']) == 0
    assert _steps(output) == _steps(full)
    assert [r['val_loss'] for r in _events(output, 'epoch')] == [r['val_loss'] for r in _events(full, 'epoch')]


def test_torchcompile_in_place_then_resume_eager(cache_dir, tmp_path):
    """torchcompile compiles the classifier in place (dynamo traces its forward); its checkpoint resumes in an eager
    run, and the weights keep the plain model's names."""
    output, stop = tmp_path / 'compiled', 3
    env = dict(os.environ, OMP_NUM_THREADS='1', TORCH_LOGS='dynamo')
    proc = subprocess.run(_command(_args('listops', output, cache_dir, 'torchcompile=aot_eager',
                                         f'stop_after_updates={stop}')),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'model compiled in place: backend aot_eager' in proc.stderr
    assert re.search(r'torchdynamo start tracing forward .*models/lra\.py', proc.stderr), proc.stderr[-3000:]
    _finish(_start(_command(_args('listops', output, cache_dir, '--resume', 'auto'))))
    assert [r['update'] for r in _events(output, 'train')] == list(range(1, EPOCHS * LISTOPS['batches'] + 1))
    eager = lra_script.build_model(lra_script.resolve_config(lra_script.parse_args(_args('listops', output, cache_dir))))
    assert load_file(output / 'best' / 'model.safetensors').keys() == eager.state_dict().keys()


def test_torchcompile_pads_every_batch_to_max_len():
    """A compiled classifier meets one shape: dynamo would compile it anew for every sequence length."""
    def padded(*overrides):
        return lra_script.resolve_config(lra_script.parse_args(['--task', 'listops', *overrides]))['pad_to_max_len']
    assert padded() is False and padded('torchcompile=aot_eager') is True
    assert padded('torchcompile=aot_eager', 'pad_to_max_len=false') is False and padded('pad_to_max_len=true') is True


@pytest.mark.parametrize('task', ['listops', 'retrieval'])
def test_batches_pad_to_their_longest_or_to_max_len(task):
    """collate_cut cuts every sequence to max_len and pads a batch to its longest sequence, or with pad_to_max_len to
    max_len (the same shape every batch: CUDA graphs); the masks mark the real tokens."""
    for lengths, pad_to_max_len, width in (([5, 9], False, 9), ([5, 9], True, 12), ([5, 30], False, 12)):
        items = [(torch.arange(1, n + 1), label) for label, n in enumerate(lengths)]
        if task == 'retrieval':  # a second document of 3 tokens each
            items = [(ids, ids[:3], label) for ids, label in items]
        inputs, labels = lra_script.collate_cut(items, task, 12, pad_to_max_len)
        ids, mask = inputs[:2]
        assert ids.shape == mask.shape == (2, width) and labels.tolist() == [0, 1]
        assert mask.sum(1).tolist() == [min(n, 12) for n in lengths] and (ids[~mask] == 0).all()
        if task == 'retrieval':
            assert inputs[2].shape == (2, 12 if pad_to_max_len else 3)


def test_pathfinder_end_to_end(cache_dir, tmp_path):
    updates = PATHFINDER['batches']
    output = tmp_path / 'pathfinder'
    out = _finish(_start(_command(_args('pathfinder', output, cache_dir))))
    epochs = _events(output, 'epoch')
    assert [r['update'] for r in epochs] == [updates * (i + 1) for i in range(EPOCHS)]
    # 32 x 32 pixel tokens cut to the first MAX_LEN: every batch is exactly BATCH x MAX_LEN
    assert all(r['train_tokens'] == updates * BATCH * MAX_LEN for r in epochs)
    # Pathfinder is not learnt from 64 pixels in CPU seconds, and its labels are balanced: the loss stays at chance
    # (log 2); a constant label, a label leak or a diverging model would move it away
    assert all(abs(r['train_loss'] - math.log(2)) < 0.1 for r in epochs), epochs
    assert _checkpoint_names(output)[-1] == f'checkpoint-{EPOCHS * updates:09d}'
    assert (output / 'best' / 'model.safetensors').is_file()
    test = _events(output, 'test')[0]
    assert test['test_count'] == 10 and 0 <= test['test_acc'] <= 100
    assert 'pathfinder: test accuracy' in out


def test_bad_input_exits_2_before_any_model_work(cache_dir, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError('a model was built')

    monkeypatch.setattr(lra_script, 'LRAClassifier', no_model)
    output = str(tmp_path / 'out')
    runs = [(['--task', 'listopz'], "unknown task 'listopz'"),
            (['--task', 'listops', 'lrr=1e-3'], "unknown config key 'lrr' (did you mean 'lr'?)"),
            (['--task', 'text'], "task 'text' needs its data"),
            (['--task', 'image', '--data-dir', str(tmp_path / 'missing')], 'data dir not found'),
            (['--task', 'retrieval', '--data-dir', str(tmp_path)], 'retrieval data:'),
            (['--task', 'listops', 'max_len=5000'], 'max_len 5000 exceeds the listops length 2000'),
            (['--task', 'listops', 'epochs=0'], 'epochs must be positive'),
            (['--task', 'listops', 'torchcompile=nope'], 'torchcompile must be a torch.compile backend'),
            (['--task', 'listops', 'torchcompile_mode=reduce-overhead'], 'with a torchcompile backend set'),
            (['--task', 'listops', 'torchcompile=inductor'], 'torchcompile=inductor on the CPU segfaulted'),
            (['--task', 'pathfinder', '--config', str(tmp_path / 'nope.yaml')], 'config file not found'),
            (['--eval-only', '--checkpoint', str(tmp_path / 'none.safetensors')], 'checkpoint not found')]
    for argv, message in runs:
        assert lra_script.main(['--cpu', '--output', output, '--cache-dir', str(cache_dir), *argv]) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)
    assert not (tmp_path / 'out').exists()


def test_pathfinder_cnn_reads_the_generated_images(cache_dir, capsys):
    """scripts/pathfinder_cnn.py (the data check of benchmarks/lra.md) trains on the same cached images and reports
    validation accuracy over the 10 validation images."""
    script = load_script('pathfinder_cnn')
    script.main(['--cache-dir', str(cache_dir), '--num-examples', str(PATHFINDER['num_examples']), '--seconds', '1',
                 '--eval-every', '1', '--batch-size', '8'])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and [r['step'] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r['val_acc'] in [10.0 * n for n in range(11)] and math.isfinite(r['loss']) for r in rows), rows
