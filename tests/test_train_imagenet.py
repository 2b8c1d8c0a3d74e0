"""scripts/train_imagenet.py, scripts/validate.py and metala_vision.training on tiny CPU runs.

The training runs go through subprocesses (`python scripts/...` and `accelerate launch --cpu`), one thread each
(OMP_NUM_THREADS=1: on a loaded 2-core machine, more threads than cores slow torch down many times over).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from metala_vision.data.synthetic import write_digits
from metala_vision.training import CheckpointDir, UsageError, load_config, read_jsonl
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = str(REPO / 'configs/imagenet/debug.yaml')
# debug.yaml with a 2-block, width-64 metala_vit_t_p4_32 on 16 tokens, 2 epochs of 50 updates. Random crops
# (python RNG), mixup (numpy), drop path (torch) and the EMA stay on, so that the resume check covers their
# states; RandAugment is off, since it keeps so short a run from learning.
TINY_RUN = ['model_kwargs.depth=2', 'model_kwargs.embed_dim=64', 'model_kwargs.num_heads=2',
            'model_kwargs.patch_size=8', 'drop_path=0.1', 'batch_size=8', 'epochs=2', 'warmup_epochs=0',
            'lr=3e-3', 'aa=null', 'mixup=0.2', 'mixup_prob=0.5', 'log_interval=1', 'workers=0', 'model_ema=true',
            'model_ema_decay=0.9']
UPDATES_PER_EPOCH = 50  # 400 training images / batch 8
STOP_AFTER = 20  # updates before the interrupted run stops: within the first epoch


train_script = load_script('train_imagenet')
validate_script = load_script('validate')


def _run(command, timeout=600, **env_vars):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **env_vars)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{command}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}'
    return proc


def _train_command(output, data_dir, *extra, launcher='python'):
    script = [str(REPO / 'scripts/train_imagenet.py'), '--config', DEBUG_CONFIG, '--data-dir', str(data_dir),
              '--output', str(output), *TINY_RUN, *extra]
    if launcher == 'accelerate':
        return [sys.executable, '-m', 'accelerate.commands.launch', '--cpu', '--num_processes', '1',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', *script]
    return [sys.executable, *script, '--cpu']  # CPU runs, also where a GPU is present: exact-resume checks


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp('data') / 'digits32')


@pytest.fixture(scope='module')
def tiny_data(digits, tmp_path_factory):
    """400 train / 60 val images of the digits set (40 / 6 per class)."""
    root = tmp_path_factory.mktemp('data') / 'tiny'
    for split, per_class in (('train', 40), ('val', 6)):
        for class_dir in sorted((digits / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy(image, root / split / class_dir.name / image.name)
    return root


def test_write_digits_layout_and_reuse(digits):
    counts = {split: sum(1 for _ in (digits / split).rglob('*.png')) for split in ('train', 'val')}
    assert counts == {'train': 1438, 'val': 359}  # all 1,797 scans, 20% of each class for validation
    assert sorted(p.name for p in (digits / 'train').iterdir()) == [str(d) for d in range(10)]
    from PIL import Image
    with Image.open(next((digits / 'val' / '7').iterdir())) as image:
        assert image.size == (32, 32) and image.mode == 'RGB'
    stamp = (digits / 'digits.json').stat().st_mtime_ns
    assert write_digits(digits) == digits and (digits / 'digits.json').stat().st_mtime_ns == stamp  # reused


def test_load_config(tmp_path):
    defaults = dict(lr=None, epochs=300, scale=[0.08, 1.0], aa='rand', model_kwargs={}, flag=False)
    config = tmp_path / 'c.yaml'
    config.write_text('lr: 5e-4\nepochs: 10\nmodel_kwargs: {depth: 4}\n')
    cfg = load_config(config, ['epochs=20', 'model_kwargs.embed_dim=96', 'scale=[0.5, 1]', 'aa=null',
                               'flag=true'], defaults, types=dict(lr=float))
    assert cfg == dict(lr=5e-4, epochs=20, scale=[0.5, 1], aa=None, model_kwargs=dict(depth=4, embed_dim=96),
                       flag=True)
    assert defaults['model_kwargs'] == {}  # not modified
    # a str setting takes an override's text as written (YAML would read no as False, 1 as an int)
    cfg = load_config(None, ['mixed_precision=no', 'aa=1'], dict(defaults, mixed_precision=None),
                      types=dict(mixed_precision=str))
    assert (cfg['mixed_precision'], cfg['aa']) == ('no', '1')
    config.write_text('aa: off\n')
    with pytest.raises(UsageError, match="'aa' must be str, got False .YAML reads no, yes, on, off as booleans"):
        load_config(config, [], defaults)
    for overrides, message in ((['lrr=1'], "unknown config key 'lrr' (did you mean 'lr'?)"),
                               (['epochs=ten'], "'epochs' must be int"),
                               (['lr=fast'], "'lr' must be float"),
                               (['flag=1'], "'flag' must be bool"),
                               (['epochs'], 'not of the form key=value'),
                               (['model_kwargs=4'], "'model_kwargs' must be a mapping")):
        with pytest.raises(UsageError, match=re.escape(message)):
            load_config(None, overrides, defaults, types=dict(lr=float))
    with pytest.raises(UsageError, match='config file not found'):
        load_config(tmp_path / 'missing.yaml', [], defaults)


class _FakeAccelerator:
    """Stands in for accelerate in CheckpointDir: save_state writes two files, optionally crashing in between."""
    is_main_process = True

    def __init__(self, crash=False):
        self.crash = crash

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        (Path(folder) / 'model.safetensors').write_text('weights')
        if self.crash:
            raise KeyboardInterrupt('killed while saving')
        (Path(folder) / 'random_states_0.pkl').write_text('rng')


def test_checkpoint_dir_is_atomic_and_keeps_the_newest(tmp_path):
    checkpoints = CheckpointDir(tmp_path / 'checkpoints', keep_last=2)
    assert checkpoints.resolve_resume(None) is None and checkpoints.resolve_resume('auto') is None
    for update in (10, 20):
        checkpoints.save(_FakeAccelerator(), update)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(_FakeAccelerator(crash=True), 30)
    assert [p.name for p in checkpoints.partial()] == ['.tmp-checkpoint-000000030']
    assert checkpoints.latest().name == 'checkpoint-000000020'  # the crashed save is ignored
    assert (checkpoints.latest() / 'random_states_0.pkl').read_text() == 'rng'
    checkpoints.remove_partial()
    assert checkpoints.partial() == []
    checkpoints.save(_FakeAccelerator(), 40)
    assert [p.name for p in checkpoints.complete()] == ['checkpoint-000000020', 'checkpoint-000000040']
    assert checkpoints.resolve_resume('auto') == checkpoints.latest()
    assert checkpoints.resolve_resume(str(checkpoints.complete()[0])) == checkpoints.complete()[0]
    with pytest.raises(UsageError, match='already holds checkpoints'):
        checkpoints.resolve_resume(None)
    with pytest.raises(UsageError, match='not a checkpoint folder'):
        checkpoints.resolve_resume(str(tmp_path))


def _bad_layouts(root: Path, image: Path) -> dict:
    """Data dirs that must be refused, keyed by the expected message."""
    cases = {}

    def make(name, files):
        for relative in files:  # 'a/b.png': a copy of `image`; 'a/': an empty folder
            path = root / name / relative
            (path if relative.endswith('/') else path.parent).mkdir(parents=True, exist_ok=True)
            if not relative.endswith('/'):
                shutil.copy(image, path)
        return root / name

    cases['data dir not found'] = root / 'missing'
    cases["no 'val' split"] = make('no_val', ['train/0/a.png'])
    cases['holds 1 images directly'] = make('flat', ['train/a.png', 'val/0/a.png'])
    cases['has no class subfolders'] = make('no_classes', ['train/', 'val/0/a.png'])
    cases['class folder(s) without images: 1'] = make('empty_class', ['train/0/a.png', 'train/1/', 'val/0/a.png'])
    cases['has classes that'] = make('val_only_class', ['train/0/a.png', 'val/0/a.png', 'val/9/a.png'])
    return cases


def test_bad_input_fails_before_any_model_work(tiny_data, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError('a model was created')

    monkeypatch.setattr(timm, 'create_model', no_model)
    image = next((tiny_data / 'train' / '0').iterdir())
    runs = [([f'--data-dir={path}'], message) for message, path in _bad_layouts(tmp_path, image).items()]
    runs += [([f'--data-dir={tiny_data}', 'model=metala_vit_xxl'], "unknown model 'metala_vit_xxl'"),
             ([f'--data-dir={tiny_data}', 'lrr=1e-3'], "unknown config key 'lrr' (did you mean 'lr'?)"),
             ([f'--data-dir={tiny_data}', 'epochs=0'], 'epochs must be positive'),
             ([f'--data-dir={tiny_data}', 'torchcompile=inductr'], "torch.compile backend of"),
             ([f'--data-dir={tiny_data}', 'torchcompile_mode=reduce-overhead'], 'with a torchcompile backend set'),
             ([f'--data-dir={tiny_data}', 'torchcompile=inductor', 'torchcompile_mode=fast'],
              "torchcompile_mode must be one of"),
             ([f'--data-dir={tiny_data}', '--config', str(tmp_path / 'nope.yaml')], 'config file not found')]
    for argv, message in runs:
        assert train_script.main(['--config', DEBUG_CONFIG, '--output', str(tmp_path / 'out'), *argv]) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)
    # accelerate's dynamo setting, as `accelerate launch --dynamo_backend inductor` passes it (a subprocess: accelerate
    # keeps its first state for the whole process)
    proc = subprocess.run([sys.executable, str(REPO / 'scripts/train_imagenet.py'), '--config', DEBUG_CONFIG, '--cpu',
                           '--output', str(tmp_path / 'out'), f'--data-dir={tiny_data}'], capture_output=True,
                          text=True, env=dict(os.environ, ACCELERATE_DYNAMO_BACKEND='inductor'), timeout=300)
    assert proc.returncode == 2 and "accelerate's dynamo backend (INDUCTOR) would rename the weights" in proc.stderr
    checkpoint = tmp_path / 'model.safetensors'
    assert validate_script.main(['--checkpoint', str(checkpoint), '--data-dir', str(tiny_data)]) == 2
    assert 'checkpoint not found' in capsys.readouterr().err
    checkpoint.write_bytes(b'')
    assert validate_script.main(['--checkpoint', str(checkpoint), '--data-dir', str(tiny_data)]) == 2
    assert 'no --model given' in capsys.readouterr().err
    assert validate_script.main(['--checkpoint', str(checkpoint), '--model', 'metala_vit_t_p4_32',
                                 '--data-dir', str(tmp_path / 'flat'), '--split', 'train']) == 2
    assert 'holds 1 images directly' in capsys.readouterr().err


def test_train_resume_exactly_and_validate(tiny_data, tmp_path, capsys):
    # the reference: two epochs without interruption
    full = tmp_path / 'full'
    _run(_train_command(full, tiny_data))
    records = read_jsonl(full / 'log.jsonl')
    steps = [r for r in records if r['event'] == 'train']
    epochs = [r for r in records if r['event'] == 'epoch']
    assert [r['update'] for r in steps] == list(range(1, 2 * UPDATES_PER_EPOCH + 1)) and len(epochs) == 2
    losses = [r['loss'] for r in steps]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.04, losses  # it learns
    assert epochs[1]['train_loss'] < epochs[0]['train_loss']
    assert [p.name for p in CheckpointDir(full / 'checkpoints').complete()] == \
        [f'checkpoint-{UPDATES_PER_EPOCH:09d}', f'checkpoint-{2 * UPDATES_PER_EPOCH:09d}']
    for folder in (full, full / 'best'):
        assert (folder / 'model.safetensors').is_file() and (folder / 'config.json').is_file()
    assert epochs[1]['peak_mem_gib'] is None and epochs[1]['train_img_per_s'] > 0

    # the same run interrupted within epoch 1 (through accelerate launch), then resumed with --resume auto
    part = tmp_path / 'part'
    _run(_train_command(part, tiny_data, f'stop_after_updates={STOP_AFTER}', launcher='accelerate'))
    assert [p.name for p in CheckpointDir(part / 'checkpoints').complete()] == [f'checkpoint-{STOP_AFTER:09d}']
    leftover = part / 'checkpoints' / f'.tmp-checkpoint-{STOP_AFTER + 3:09d}'  # a save killed half-way
    leftover.mkdir()
    (leftover / 'model.safetensors').write_bytes(b'partial')
    _run(_train_command(part, tiny_data, '--resume', 'auto'))
    assert not leftover.exists()
    resumed = read_jsonl(part / 'log.jsonl')
    resume_at = next(i for i, r in enumerate(resumed) if r['event'] == 'resume')
    assert resumed[resume_at]['update'] == STOP_AFTER and resumed[resume_at]['batch'] == STOP_AFTER
    after = [r for r in resumed[resume_at:] if r['event'] == 'train']
    assert after[0]['update'] == STOP_AFTER + 1
    # bit-identical continuation: every later step's loss and lr, the validation results, the final weights
    assert [(r['update'], r['loss'], r['lr']) for r in after] == \
        [(r['update'], r['loss'], r['lr']) for r in steps[STOP_AFTER:]]
    metric_keys = ('val_top1', 'val_top5', 'val_loss', 'ema_val_top1', 'ema_val_loss', 'best_top1')
    assert [{k: r[k] for k in metric_keys} for r in resumed if r['event'] == 'epoch'] == \
        [{k: r[k] for k in metric_keys} for r in epochs]
    final_full, final_part = load_file(full / 'model.safetensors'), load_file(part / 'model.safetensors')
    assert final_full.keys() == final_part.keys()
    assert all(torch.equal(final_full[k], final_part[k]) for k in final_full)

    # validate.py on the exported (EMA) weights gives the logged validation result
    assert validate_script.main(['--checkpoint', str(full / 'model.safetensors'), '--data-dir', str(tiny_data),
                                 '--batch-size', '16', '--workers', '0', '--cpu']) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics['count'] == 60
    assert metrics['top1'] == pytest.approx(epochs[-1]['ema_val_top1'], abs=1e-9)
    assert metrics['loss'] == pytest.approx(epochs[-1]['ema_val_loss'], rel=1e-5)
    # and the weights load through timm's pretrained_cfg_overlay as documented
    model = timm.create_model('metala_vit_t_p4_32', pretrained=True, num_classes=10, depth=2, embed_dim=64,
                              num_heads=2, patch_size=8,
                              pretrained_cfg_overlay=dict(file=str(full / 'model.safetensors'), num_classes=10))
    assert all(torch.equal(v, final_full[k]) for k, v in model.state_dict().items())


def test_torchcompile_in_place_and_resume_without_it(tiny_data, tmp_path):
    """torchcompile compiles the model in place (dynamo traces its forward): the checkpoint it writes resumes in an
    eager run, and the exported weights have the plain model's names."""
    out = tmp_path / 'compiled'
    proc = _run(_train_command(out, tiny_data, 'epochs=1', 'model_ema=false', 'torchcompile=aot_eager',
                               f'stop_after_updates={STOP_AFTER}'), TORCH_LOGS='dynamo')
    assert 'model compiled in place: backend aot_eager' in proc.stderr
    assert re.search(r'torchdynamo start tracing forward .*metala_vit\.py', proc.stderr), proc.stderr[-3000:]
    _run(_train_command(out, tiny_data, 'epochs=1', 'model_ema=false', '--resume', 'auto'))
    records = read_jsonl(out / 'log.jsonl')
    assert [r['update'] for r in records if r['event'] == 'train'] == list(range(1, UPDATES_PER_EPOCH + 1))
    plain = timm.create_model('metala_vit_t_p4_32', num_classes=10, depth=2, embed_dim=64, num_heads=2, patch_size=8)
    assert load_file(out / 'model.safetensors').keys() == plain.state_dict().keys()
