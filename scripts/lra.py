#!/usr/bin/env python3
"""Long Range Arena: trains and evaluates LRAClassifier (MetaLA blocks) with accelerate.

    accelerate launch scripts/lra.py --task listops --config configs/lra/listops.yaml --max-minutes 25 --resume auto
    python scripts/lra.py --task text --config configs/lra/text.yaml --data-dir /data/lra --output output/lra/text
    python scripts/lra.py --task listops --config configs/lra/debug.yaml --cpu            # tiny: CPU seconds
    python scripts/lra.py --eval-only --checkpoint output/lra/listops/best/model.safetensors

Data (metala_vision.data.lra.build_lra_datasets): without a data dir ListOps, Pathfinder and Path-X are generated
(cached under `cache_dir`; `num_examples: null` gives LRA's sizes, smaller values quick runs); text, retrieval and
image need --data-dir (their published files; nothing is downloaded). `max_len` below the task's length cuts every
sequence to its first max_len tokens (for quick CPU runs; the LRA numbers need the full length).

Settings come from DEFAULTS below, then the YAML file, then `key=value` overrides; unknown keys are errors. The
task configs, configs/lra/<task>.yaml, carry the hyperparameters of S5 (their header comments say what differs).
Optimisation: AdamW (timm; no weight decay on biases, norms and the model's no_weight_decay() names), lr warmed up
linearly over `warmup_epochs`, then a cosine decay to `min_lr` over the remaining epochs, both stepped every update.
`batch_size` is per process. Mixed precision: `mixed_precision:` in the config, else accelerate launch's setting.
torch.compile: `torchcompile: inductor` compiles the model in place (as train_imagenet.py does; accelerate's
`--dynamo_backend` is refused) and then pads every batch to max_len (`pad_to_max_len` null means true with
torchcompile, else false): dynamo compiles the classifier anew for each sequence length it meets (~75 s each on a
CPU), and `torchcompile_mode: reduce-overhead` records CUDA graphs per shape. Without torchcompile batches are padded
to their longest sequence.

Outputs in --output (default output/lra/<task>): `log.jsonl` ('data'; 'train' every log_interval updates: loss, lr,
tokens/s; 'epoch': train loss and tokens/s, val loss and accuracy, best so far, peak CUDA memory; 'resume'; 'stop';
'test'), `config.yaml` (the resolved settings), `checkpoints/checkpoint-<update>/` (accelerator.save_state at each
epoch end: model, optimizer, scheduler, RNG states, progress; atomic, newest `keep_checkpoints` kept) and
`best/model.safetensors`, the weights of the best validation accuracy, with the settings in its metadata. At the
end the best weights are evaluated on the test split (printed and logged as 'test'). Tokens/s counts sequence
positions including padding (what the model computes), all processes together.

Resuming: `--resume auto` continues from the newest checkpoint (or starts fresh if there is none). Stopping early:
`--max-minutes N` (a time budget from the script's start, checked every log_interval updates) or
`stop_after_updates` ends training; the current weights are then validated (a 'partial_epoch' record; they become
best/ if better), a checkpoint is saved (mid-epoch if need be: --resume continues with the next batch) and the best
weights are tested. The resumed training repeats the uninterrupted one exactly on the CPU (data order seeded by
(seed, epoch), dropout by the saved RNG states, evaluations leave the RNG alone); on a GPU, as exactly as two runs
from the same seed agree there, which is not bitwise (ListOps compiled on an H200: the loss equal to 5 digits at
update 50, validation accuracy 34.7-36.9% after the first epoch of three runs; benchmarks/lra.md). Only a
mid-epoch stop's extra validation may change best/, and the resumed epoch's train_loss covers the batches trained
after the resume. The 'resume' and 'stop' records hold the progress state: `epoch` counts the finished epochs,
`batch` the batches of the next one.

`--eval-only --checkpoint PATH` evaluates a best/model.safetensors on the validation and test splits with the
settings recorded in it (--data-dir / --cache-dir replace the recorded paths) and prints one JSON line.
"""
import dataclasses
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from metala_vision.data.lra import LRA_TASKS, build_lra_datasets, lra_collate_fn
from metala_vision.layers.block import MLP_LAYERS
from metala_vision.models.lra import LRAClassifier
from metala_vision.training import (CheckpointDir, EpochLosses, JsonlLogger, TrainProgress, UsageError,
                                    check_compile_launch, check_torchcompile, compile_in_place, epoch_batches,
                                    evaluate_classifier, load_config, peak_memory_gib, reset_peak_memory,
                                    run_arg_parser, save_safetensors)

_logger = get_logger('lra', log_level='INFO')  # logs on the main process only

DEFAULTS = dict(
    task=None,  # listops | text | retrieval | image | pathfinder | pathx (or --task)
    # data (metala_vision.data.lra.build_lra_datasets)
    data_dir=None,  # the LRA data in its published layouts; null = generate (listops, pathfinder, pathx only)
    cache_dir=None,  # where generated sets are kept; null = ~/.cache/metala_vision/lra
    data_seed=0,  # seed of the generated sets
    num_examples=None,  # size of a generated set; null = LRA's (100,000 ListOps, 200,000 Pathfinder/Path-X images)
    difficulty='hard',  # Pathfinder / Path-X contour length: easy | intermediate | hard (LRA: hard)
    max_len=None,  # tokens kept per sequence (per document for retrieval); null = the task's length
    generate_workers=None,  # processes generating data; null = all cores
    workers=2,  # data-loading processes per training process (0 = load in the main process)
    pad_to_max_len=None,  # pad every batch to max_len (one shape), not to its longest; null = true with torchcompile
    # model (LRAClassifier)
    dim=128,
    depth=4,
    num_heads=None,  # null = dim // 64 (64-wide heads)
    mlp_ratio=2.0,
    mlp_layer='gelu',  # gelu | swiglu
    pos_embed=False,
    dropout=0.0,  # embedding, projection, MLP and head dropout
    drop_path=0.0,
    separate_bwd_gates=False,
    gate_norm=16.0,  # log alpha = logsigmoid(.) / gate_norm: larger = slower decay (longer memory) at init
    decay_init=None,  # [t_min, t_max]: gate biases spreading the initial memory lengths over t_min..t_max tokens
    init_values=None,  # layer scale of both branches of every block at init (null: none)
    gate_lower_bounds=False,  # HGRN's learned floors of the decays, rising with depth (LRAClassifier)
    # optimisation
    batch_size=32,  # per process
    val_batch_size=None,  # null = batch_size
    epochs=10,
    lr=1e-3,
    weight_decay=0.05,
    opt_betas=[0.9, 0.999],
    warmup_epochs=1,
    warmup_lr=1e-6,  # lr of the first update
    min_lr=0.0,  # end of the cosine decay
    clip_grad=None,  # max gradient norm; null = no clipping
    # run
    seed=0,
    mixed_precision=None,  # 'no' | 'bf16' | 'fp16'; null = accelerate launch's setting
    torchcompile=None,  # torch.compile backend ('inductor'), applied to the model in place before accelerate wraps it
    torchcompile_mode=None,  # its mode: null (default), 'reduce-overhead' (CUDA graphs), ...
    output=None,  # null = output/lra/<task>
    log_interval=50,  # updates between 'train' records (and time-budget checks)
    keep_checkpoints=2,  # newest checkpoints kept; 0 = all
    stop_after_updates=None,  # end this run (with a checkpoint) after this many updates; the schedule is kept
)
# Types of the keys whose default is null.
TYPES = dict(task=str, data_dir=str, cache_dir=str, num_examples=int, max_len=int, generate_workers=int,
             pad_to_max_len=bool, num_heads=int, val_batch_size=int, clip_grad=float, mixed_precision=str, output=str,
             stop_after_updates=int, decay_init=list, init_values=float, torchcompile=str, torchcompile_mode=str)
_POSITIVE = ('max_len', 'generate_workers', 'dim', 'depth', 'num_heads', 'batch_size', 'val_batch_size', 'epochs',
             'log_interval', 'stop_after_updates', 'num_examples')
_NON_NEGATIVE = ('workers', 'warmup_epochs', 'keep_checkpoints', 'lr', 'weight_decay', 'dropout', 'drop_path')
# What the tasks that are never generated need in --data-dir.
_DATA_LAYOUTS = {'text': 'aclImdb/ or aclImdb_v1.tar.gz (IMDB reviews)',
                 'retrieval': "lra_release's tsv_data/new_aan_pairs.{train,eval,test}.tsv (AAN pairs)",
                 'image': 'cifar-10-batches-py/ or cifar-10-python.tar.gz (CIFAR-10)'}
WEIGHTS = 'model.safetensors'
_SETTINGS_KEY = 'lra_config'  # safetensors metadata entry holding the run's settings (JSON)


def parse_args(argv=None):
    parser = run_arg_parser(__doc__)
    parser.add_argument('--task', help=f"LRA task: {', '.join(LRA_TASKS)} (overrides task)")
    parser.add_argument('--data-dir', help='LRA data folder (overrides data_dir)')
    parser.add_argument('--cache-dir', help='folder of generated data sets (overrides cache_dir)')
    parser.add_argument('--max-minutes', type=float, metavar='N',
                        help='time budget: end training after N minutes from the start, then validate, save, test')
    parser.add_argument('--eval-only', action='store_true',
                        help='evaluate --checkpoint on the validation and test splits instead of training')
    parser.add_argument('--checkpoint', help='best/model.safetensors written by this script (with --eval-only)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    start = time.monotonic()
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    args = parse_args(argv)
    try:
        if args.eval_only:
            return evaluate_checkpoint(args)
        if args.checkpoint:
            raise UsageError('--checkpoint goes with --eval-only (to continue a run, use --resume)')
        if args.max_minutes is not None and args.max_minutes < 0:
            raise UsageError(f'--max-minutes must be non-negative, got {args.max_minutes}')
        cfg = resolve_config(args)
        checkpoints = CheckpointDir(Path(cfg['output']) / 'checkpoints', cfg['keep_checkpoints'])
        resume_from = checkpoints.resolve_resume(args.resume)
        deadline = None if args.max_minutes is None else start + 60 * args.max_minutes
        return train(cfg, checkpoints, resume_from, deadline, cpu=args.cpu)
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def resolve_config(args) -> dict:
    """Settings from DEFAULTS, --config, overrides and the --task/--data-dir/--cache-dir/--output flags, checked."""
    cfg = load_config(args.config, args.overrides, DEFAULTS, TYPES)
    for key in ('task', 'data_dir', 'cache_dir', 'output'):
        flag = getattr(args, key)
        if key == 'task' and flag and cfg['task'] and flag != cfg['task']:
            raise UsageError(f"--task {flag} but {args.config} is for task {cfg['task']!r}")
        cfg[key] = flag or cfg[key]
    if cfg['task'] is None:
        raise UsageError(f"no task: pass --task ({', '.join(LRA_TASKS)})")
    if cfg['task'] not in LRA_TASKS:
        raise UsageError(f"unknown task {cfg['task']!r}; choose one of {', '.join(LRA_TASKS)}")
    cfg['output'] = cfg['output'] or str(Path('output/lra') / cfg['task'])
    for name in _POSITIVE + _NON_NEGATIVE:
        if cfg[name] is not None and (cfg[name] < 0 or cfg[name] == 0 and name in _POSITIVE):
            raise UsageError(f'{name} must be {"positive" if name in _POSITIVE else "non-negative"}, '
                             f'got {cfg[name]}')
    task_len = LRA_TASKS[cfg['task']].max_len
    if cfg['max_len'] is not None and cfg['max_len'] > task_len:
        raise UsageError(f"max_len {cfg['max_len']} exceeds the {cfg['task']} length {task_len}")
    cfg['max_len'] = cfg['max_len'] or task_len
    if cfg['warmup_epochs'] and cfg['warmup_epochs'] >= cfg['epochs']:
        raise UsageError(f"warmup_epochs ({cfg['warmup_epochs']}) must be fewer than epochs ({cfg['epochs']})")
    if cfg['mixed_precision'] not in (None, 'no', 'bf16', 'fp16'):
        raise UsageError(f"mixed_precision must be 'no', 'bf16', 'fp16' or null, got {cfg['mixed_precision']!r}")
    if cfg['mlp_layer'] not in MLP_LAYERS:
        raise UsageError(f"mlp_layer must be one of {', '.join(MLP_LAYERS)}, got {cfg['mlp_layer']!r}")
    if cfg['difficulty'] not in ('easy', 'intermediate', 'hard'):
        raise UsageError(f"difficulty must be easy, intermediate or hard, got {cfg['difficulty']!r}")
    if len(cfg['opt_betas']) != 2:
        raise UsageError(f"opt_betas must be [beta1, beta2], got {cfg['opt_betas']}")
    check_torchcompile(cfg)
    if cfg['torchcompile'] == 'inductor' and (args.cpu or not torch.cuda.is_available()):
        raise UsageError("torchcompile=inductor on the CPU segfaulted in the compiled classifier (torch 2.14.1, fp32 "
                         "and bf16; benchmarks/lra.md): leave torchcompile null for a CPU run (or use aot_eager)")
    if cfg['pad_to_max_len'] is None:  # a compiled model recompiles for every new length (~75 s each on a CPU)
        cfg['pad_to_max_len'] = bool(cfg['torchcompile'])
    check_data(cfg)
    return cfg


def check_data(cfg):
    """The data checks that need no loading: a data dir for the tasks that are never generated, and that it exists."""
    if cfg['data_dir'] is None and cfg['task'] in _DATA_LAYOUTS:
        raise UsageError(f"task {cfg['task']!r} needs its data, which is neither generated nor downloaded: pass "
                         f"--data-dir DIR holding {_DATA_LAYOUTS[cfg['task']]}")
    if cfg['data_dir'] is not None and not Path(cfg['data_dir']).expanduser().exists():
        raise UsageError(f"data dir not found: {cfg['data_dir']}")


def load_datasets(cfg, accelerator) -> dict:
    """{'train', 'val', 'test'} datasets of the task; generated sets are made by the main process first."""
    with accelerator.main_process_first():
        try:
            splits = build_lra_datasets(cfg['task'], cfg['data_dir'], cfg['cache_dir'], seed=cfg['data_seed'],
                                        difficulty=cfg['difficulty'], num_examples=cfg['num_examples'],
                                        num_workers=cfg['generate_workers'])
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"{cfg['task']} data: {e}") from None
    return dict(zip(('train', 'val', 'test'), splits))


def collate_cut(items, task, max_len, pad_to_max_len=False):
    """A task's collate_fn over items whose sequences are first cut to max_len tokens, padded to the batch's longest
    or to max_len; returns (inputs, labels), inputs being the model's positional arguments: (ids, mask) or, for
    retrieval, (ids1, mask1, ids2, mask2)."""
    items = [tuple(x[:max_len] if torch.is_tensor(x) else x for x in item) for item in items]
    *inputs, labels = lra_collate_fn(task, max_len if pad_to_max_len else None)(items)
    return tuple(inputs), labels


def loader_kwargs(cfg, accelerator) -> dict:
    return dict(collate_fn=partial(collate_cut, task=cfg['task'], max_len=cfg['max_len'],
                                   pad_to_max_len=cfg['pad_to_max_len']),
                num_workers=cfg['workers'], persistent_workers=cfg['workers'] > 0,
                pin_memory=accelerator.device.type == 'cuda')


def eval_loaders(cfg, datasets, accelerator) -> list:
    """Validation and test loaders (not yet prepared). Each has its own generator, so that an evaluation leaves the
    global RNG (dropout) as it was: a stop's extra validation does not change the training that follows."""
    return [DataLoader(datasets[split], batch_size=cfg['val_batch_size'] or cfg['batch_size'],
                       generator=torch.Generator(), **loader_kwargs(cfg, accelerator)) for split in ('val', 'test')]


def build_model(cfg) -> LRAClassifier:
    info = LRA_TASKS[cfg['task']]
    return LRAClassifier(info.vocab_size, info.num_classes, cfg['max_len'], dim=cfg['dim'], depth=cfg['depth'],
                         num_heads=cfg['num_heads'], mlp_ratio=cfg['mlp_ratio'], mlp_layer=cfg['mlp_layer'],
                         pos_embed=cfg['pos_embed'], drop_rate=cfg['dropout'], drop_path_rate=cfg['drop_path'],
                         separate_bwd_gates=cfg['separate_bwd_gates'], gate_norm=cfg['gate_norm'],
                         decay_init=cfg['decay_init'], init_values=cfg['init_values'],
                         gate_lower_bounds=cfg['gate_lower_bounds'], paired=info.paired)


class _Unpacked(nn.Module):
    """Calls `model(*inputs)`, so that evaluate_classifier can pass a batch's tuple of inputs as one argument."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model(*inputs)


def evaluate(model, loader, accelerator) -> dict:
    """Loss, accuracy (%) and count of `model` over a prepared loader."""
    metrics = evaluate_classifier(_Unpacked(model), loader, accelerator)
    return dict(loss=metrics['loss'], acc=metrics['top1'], count=metrics['count'])


def save_weights(accelerator, model, path: Path, cfg: dict):
    """Writes the weights of `model` (prepared or plain) to `path` with `cfg` in the safetensors metadata; the file
    appears complete or not at all. All processes must call it (the state dict is gathered); the main one writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(state_dict, path, metadata={_SETTINGS_KEY: json.dumps(cfg)})
    accelerator.wait_for_everyone()


def read_settings(path) -> dict:
    """The run settings recorded in a weights file written by save_weights."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f'checkpoint not found: {path}')
    try:
        with safe_open(str(path), 'pt') as f:
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise UsageError(f'{path} is not a safetensors file: {e}') from None
    if _SETTINGS_KEY not in metadata:
        raise UsageError(f'{path} holds no LRA settings; expected the best/{WEIGHTS} of a scripts/lra.py run')
    return json.loads(metadata[_SETTINGS_KEY])


@dataclasses.dataclass
class Run:
    """What the training loop works with."""
    cfg: dict
    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    loader_generator: torch.Generator
    batches_per_epoch: int
    val_loader: DataLoader
    test_loader: DataLoader
    progress: TrainProgress
    checkpoints: CheckpointDir
    logger: JsonlLogger
    deadline: Optional[float]  # time.monotonic() at which training ends (--max-minutes)


def train(cfg, checkpoints, resume_from, deadline, cpu=False) -> int:
    output = Path(cfg['output'])
    accelerator = Accelerator(cpu=cpu, mixed_precision=cfg['mixed_precision'])
    check_compile_launch(cfg, accelerator)
    datasets = load_datasets(cfg, accelerator)
    sampler = DistributedSampler(datasets['train'], num_replicas=accelerator.num_processes,
                                 rank=accelerator.process_index, shuffle=True, seed=cfg['seed'])
    batches_per_epoch = len(sampler) // cfg['batch_size']
    if batches_per_epoch == 0:
        raise UsageError(f"{len(datasets['train'])} training examples make no full batch of {cfg['batch_size']} "
                         f"on each of {accelerator.num_processes} processes")
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / 'config.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
        checkpoints.remove_partial()  # temp folders of saves that were interrupted
    accelerator.wait_for_everyone()

    set_seed(cfg['seed'], device_specific=True)
    model = build_model(cfg)
    _logger.info(f"{cfg['task']}: LRAClassifier with {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                 f"parameters; {len(datasets['train'])} / {len(datasets['val'])} / {len(datasets['test'])} "
                 f"train / val / test examples, up to {cfg['max_len']} tokens, {batches_per_epoch} batches per epoch "
                 f"and process")
    optimizer = create_optimizer_v2(model, opt='adamw', lr=cfg['lr'], weight_decay=cfg['weight_decay'],
                                    betas=tuple(cfg['opt_betas']))
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=cfg['epochs'] - cfg['warmup_epochs'],
                                       warmup_epochs=cfg['warmup_epochs'], warmup_lr=cfg['warmup_lr'],
                                       min_lr=cfg['min_lr'], warmup_prefix=True, step_on_epochs=False,
                                       updates_per_epoch=batches_per_epoch)
    compile_in_place(model, cfg, _logger)
    loader_generator = torch.Generator()  # re-seeded every epoch from (seed, process, epoch)
    # The train loader stays out of accelerator.prepare: its sampler already shards across processes.
    train_loader = DataLoader(datasets['train'], batch_size=cfg['batch_size'], sampler=sampler, drop_last=True,
                              generator=loader_generator, **loader_kwargs(cfg, accelerator))
    model, optimizer, val_loader, test_loader = accelerator.prepare(
        model, optimizer, *eval_loaders(cfg, datasets, accelerator))
    run = Run(cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
              train_loader=train_loader, loader_generator=loader_generator, batches_per_epoch=batches_per_epoch,
              val_loader=val_loader, test_loader=test_loader, progress=TrainProgress(), checkpoints=checkpoints,
              logger=JsonlLogger(output / 'log.jsonl', enabled=accelerator.is_main_process), deadline=deadline)
    run.logger.log('data', task=cfg['task'], max_len=cfg['max_len'], batches_per_epoch=batches_per_epoch,
                   **{split: len(dataset) for split, dataset in datasets.items()})
    accelerator.register_for_checkpointing(scheduler, run.progress)
    if resume_from:
        accelerator.load_state(str(resume_from))
        _logger.info(f'resumed from {resume_from}: epoch {run.progress.epoch + 1}, batch {run.progress.batch}, '
                     f'update {run.progress.update}')
        run.logger.log('resume', checkpoint=str(resume_from), **run.progress.state_dict())
    fit(run)
    test_best(run)
    return 0


def fit(run: Run):
    """Epochs from the current progress to the end, or until a stop (time budget, stop_after_updates)."""
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    stop = None
    while progress.epoch < cfg['epochs'] and not stop:
        reset_peak_memory(accelerator.device)
        stats, stop = train_epoch(run)
        finished = stop is None or progress.batch == run.batches_per_epoch  # the loader ran out, or stopped at its end
        if finished:
            progress.epoch, progress.batch = progress.epoch + 1, 0
        epoch = progress.epoch if finished else progress.epoch + 1  # the epoch the current weights come from
        metrics = evaluate(run.model, run.val_loader, accelerator)
        if progress.best_metric is None or metrics['acc'] > progress.best_metric:
            progress.best_metric, progress.best_epoch = metrics['acc'], epoch
            save_weights(accelerator, run.model, Path(cfg['output']) / 'best' / WEIGHTS, cfg)
        peak = peak_memory_gib(accelerator.device)
        record = dict(epoch=epoch, batch=progress.batch, update=progress.update, **stats, val_loss=metrics['loss'],
                      val_acc=metrics['acc'], best_val_acc=progress.best_metric, best_epoch=progress.best_epoch,
                      peak_mem_gib=peak)
        run.logger.log('epoch' if finished else 'partial_epoch', **record)
        _logger.info(f"epoch {epoch}/{cfg['epochs']}{'' if finished else f' (stopped at batch {progress.batch})'}: "
                     f"train loss {stats['train_loss']:.4f}, {stats['train_tokens_per_s']:.0f} tokens/s, peak mem "
                     f"{'n/a' if peak is None else f'{peak:.2f} GiB'} | val loss {metrics['loss']:.4f}, accuracy "
                     f"{metrics['acc']:.2f}% | best {progress.best_metric:.2f}% (epoch {progress.best_epoch})")
        run.checkpoints.save(accelerator, progress.update)
    if stop:
        run.logger.log('stop', reason=stop, **progress.state_dict())
        _logger.info(f'stopped ({stop}) at epoch {progress.epoch + 1}, batch {progress.batch}, update '
                     f'{progress.update}; continue with --resume auto')


def train_epoch(run: Run):
    """Trains from progress.batch to the end of the epoch or to a stop; returns (stats, stop reason or None)."""
    cfg, accelerator, progress, model = run.cfg, run.accelerator, run.progress, run.model
    epoch = progress.epoch
    first_batch = progress.batch
    loader, bar = epoch_batches(accelerator, run.train_loader, run.loader_generator, cfg['seed'], epoch, first_batch,
                                run.batches_per_epoch, cfg['epochs'])
    model.train()
    losses, stop = EpochLosses(accelerator.device), None
    for batch_index, (inputs, labels) in enumerate(loader, start=first_batch):
        inputs = tuple(x.to(accelerator.device, non_blocking=True) for x in inputs)
        labels = labels.to(accelerator.device, non_blocking=True)
        loss = F.cross_entropy(model(*inputs).float(), labels)
        accelerator.backward(loss)
        if cfg['clip_grad']:
            accelerator.clip_grad_norm_(model.parameters(), cfg['clip_grad'])
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        progress.update += 1
        progress.batch = batch_index + 1
        run.scheduler.step_update(num_updates=progress.update)
        losses.add(loss, sum(ids.numel() for ids in inputs[::2]) * accelerator.num_processes)  # ids (and ids2)
        bar.update(1)
        if progress.update % cfg['log_interval'] == 0:
            mean_loss, tokens_per_s = losses.take_window(accelerator)
            lr = max(group['lr'] for group in run.optimizer.param_groups)
            run.logger.log('train', epoch=epoch + 1, batch=progress.batch, update=progress.update, loss=mean_loss,
                           lr=lr, tokens_per_s=tokens_per_s)
            bar.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{lr:.2e}', tok_s=f'{tokens_per_s:.0f}')
            if run.deadline is not None and time_is_up(run.deadline, accelerator):
                stop = 'max_minutes'
        if cfg['stop_after_updates'] and progress.update >= cfg['stop_after_updates']:
            stop = 'stop_after_updates'
        if stop:
            break
    bar.close()
    meter = losses.epoch_meter
    return dict(train_loss=losses.epoch_loss_mean(accelerator), train_tokens=meter.count,
                train_tokens_per_s=meter.rate(), train_time_s=meter.elapsed()), stop


def time_is_up(deadline: float, accelerator) -> bool:
    """Whether any process has passed `deadline` (all processes get the same answer)."""
    late = torch.tensor(float(time.monotonic() >= deadline), device=accelerator.device)
    return accelerator.reduce(late, 'sum').item() > 0


def test_best(run: Run):
    """Evaluates the best weights on the test split; prints and logs the result."""
    accelerator, progress = run.accelerator, run.progress
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(run.model).load_state_dict(load_file(Path(run.cfg['output']) / 'best' / WEIGHTS))
    metrics = evaluate(run.model, run.test_loader, accelerator)
    run.logger.log('test', best_epoch=progress.best_epoch, best_val_acc=progress.best_metric,
                   test_loss=metrics['loss'], test_acc=metrics['acc'], test_count=metrics['count'])
    if accelerator.is_main_process:
        print(f"{run.cfg['task']}: test accuracy {metrics['acc']:.2f}% ({metrics['count']} examples) with the best "
              f"weights (epoch {progress.best_epoch}, validation accuracy {progress.best_metric:.2f}%)")


def evaluate_checkpoint(args) -> int:
    """--eval-only: validation and test metrics of a best/model.safetensors, printed as one JSON line."""
    if args.config or args.overrides or args.resume or args.max_minutes is not None:
        raise UsageError('--eval-only takes its settings from the checkpoint; --config, key=value overrides, '
                         '--resume and --max-minutes do not apply')
    if not args.checkpoint:
        raise UsageError('--eval-only needs --checkpoint PATH (a best/model.safetensors written by this script)')
    cfg = read_settings(args.checkpoint)
    if args.task and args.task != cfg['task']:
        raise UsageError(f"--task {args.task} but {args.checkpoint} is a {cfg['task']} model")
    cfg['data_dir'] = args.data_dir or cfg['data_dir']
    cfg['cache_dir'] = args.cache_dir or cfg['cache_dir']
    check_data(cfg)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=cfg['mixed_precision'])
    datasets = load_datasets(cfg, accelerator)
    model = build_model(cfg)
    model.load_state_dict(load_file(args.checkpoint))
    model, val_loader, test_loader = accelerator.prepare(model, *eval_loaders(cfg, datasets, accelerator))
    results = dict(checkpoint=str(args.checkpoint), task=cfg['task'])
    for split, loader in (('val', val_loader), ('test', test_loader)):
        results.update({f'{split}_{k}': v for k, v in evaluate(model, loader, accelerator).items()})
    if accelerator.is_main_process:
        print(json.dumps(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
