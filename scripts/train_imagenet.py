#!/usr/bin/env python3
"""Image-classification training of any timm model with accelerate: the DeiT recipe on ImageNet-style folders.

    accelerate launch scripts/train_imagenet.py --config configs/imagenet/metala_vit_s.yaml \
        --data-dir /data/imagenet --output output/metala_vit_s [key=value ...]
    python scripts/train_imagenet.py --config configs/imagenet/debug.yaml      # built-in digits, a few CPU minutes

The data is an ImageFolder: `<data-dir>/train/<class>/*.jpg` and `<data-dir>/val/<class>/*.jpg`. Without a data dir
(neither --data-dir nor `data_dir:`) the script writes scikit-learn's handwritten digits as one under the output
folder and trains on that. Settings come from DEFAULTS below, then the YAML file, then `key=value` overrides
(dotted for nested keys: `model_kwargs.depth=6`); unknown keys are errors.

Multi-GPU, mixed precision, FSDP: `accelerate launch` (or `accelerate config`) options; `mixed_precision:` in the
config, when set, takes precedence. Under FSDP set `fsdp_use_orig_params: true` (the optimizer has separate
weight-decay / layer-decay parameter groups); `model_ema` is refused there. (DDP: tested on CPU, and run on
2 GPUs with a mid-epoch resume; FSDP 2: run on 2 GPUs, without a resume so far. See benchmarks/training.md.)
`batch_size` is per process; with `lr: null` the learning rate is `lr_base * global_batch / lr_base_size` (DeiT:
5e-4 * batch / 512), global_batch = batch_size * processes * grad_accum_steps. Repeated augmentation
(`aug_repeats`) uses timm's RepeatAugSampler across processes and is switched off (with a warning) for a single
process, as in DeiT.

torch.compile: `torchcompile: inductor` (timm's --torchcompile, as a setting) compiles the model in place before
accelerate wraps it, so the weights keep their names in checkpoints and exports, and a run may resume with or
without it; `torchcompile_mode: reduce-overhead` adds CUDA graphs. A training step of metala_vit_s at batch 128 on
an H200 (scripts/bench_models.py, bf16) ran at 3,962 img/s compiled and 4,952 with CUDA graphs, against 2,500-3,400
eager. (Run on an H200 with inductor, default and reduce-overhead, through an epoch of the digits with validation
and export; tested on the CPU with aot_eager.) accelerate's own dynamo option (`--dynamo_backend`) is refused: it
would rename the weights.

Outputs in --output: `log.jsonl` (one JSON object per line: 'train' every log_interval updates, 'epoch' with
validation top-1/top-5/loss, img/s and peak CUDA memory, 'resume'), `config.yaml` (the resolved settings),
`checkpoints/checkpoint-<update>/` (accelerator.save_state: model, optimizer, scheduler, EMA, scaler, RNG states,
progress; written atomically, newest `keep_checkpoints` kept), `model.safetensors` + `config.json` (the latest
weights, the EMA's when `model_ema`), `best/` (the same for the best validation top-1). Load the weights with
`timm.create_model('local-dir:OUTPUT', pretrained=True)` or `timm.create_model(NAME, pretrained=True, num_classes=N,
pretrained_cfg_overlay=dict(file='OUTPUT/model.safetensors', num_classes=N))` (plus the model_kwargs, if any), or
evaluate them with scripts/validate.py.

Data loading: JPEG decoding and the DeiT augmentation run on the CPU in `workers` processes per GPU (pinned
memory, `prefetch_factor` batches ahead, persistent). One worker delivers about 140 img/s (a 500x375 JPEG through
RandomResizedCrop 224 + RandAugment m9 + random erasing, measured on one core of a shared 2-core EPYC VM; expect
150-250 on a server core). The GPUs train at (benchmarks/models.md, H200, bf16, eager) 2,329 img/s for
metala_vit_t, 2,494 for metala_vit_s, 1,467 for metala_vit_b and 5,352 for deit_tiny, so one GPU needs about
10-17 workers for metala T/S, 6-10 for B and 20-35 for DeiT-T; the ImageNet configs use 12. The 'epoch' records
give train img/s (all processes together): well below those figures with busy CPUs means the input pipeline is
the limit (add cores/workers, or pillow-simd).

Resuming: `--resume auto` continues from the newest checkpoint in the output folder (and starts fresh if there is
none, so a requeued job can always pass it); `--resume PATH` from a given one. Checkpoints are written at each
epoch end and, with `checkpoint_interval: N`, every N updates within an epoch; a mid-epoch resume skips the batches
already trained (accelerator.skip_first_batches). The continuation is bit-identical to an uninterrupted run when the
images are decoded and augmented in the main process (`workers: 0`); with workers, the data order, model,
optimizer, scheduler, EMA and the main process's RNG (mixup, drop path) are restored exactly, but the workers' own
augmentation draws are not (and with `persistent_workers` they are not re-seeded per epoch).
"""
import dataclasses
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import timm
import torch
import yaml
from accelerate import Accelerator, DistributedType
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from timm.data import Mixup, create_dataset, create_transform, resolve_data_config
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler

import metala_vision  # noqa: F401  (registers the metala_vit models with timm)
from metala_vision.data.synthetic import write_digits
from metala_vision.training import (CheckpointDir, EpochLosses, JsonlLogger, TrainProgress, UsageError,
                                    check_compile_launch, check_image_folder, check_torchcompile, compile_in_place,
                                    epoch_batches, evaluate_classifier, export_timm_weights, flatten_config,
                                    load_config, peak_memory_gib, reset_peak_memory, run_arg_parser)

_logger = get_logger('train_imagenet', log_level='INFO')  # logs on the main process only

# Every setting, with its default (timm's train.py names). The YAML configs and key=value overrides change these.
DEFAULTS = dict(
    # data
    data_dir=None,  # ImageFolder root holding train_split/ and val_split/; null = the built-in digits set
    train_split='train',
    val_split='val',
    workers=8,  # data-loading processes per training process (0 = load in the main process)
    pin_memory=True,
    persistent_workers=True,
    prefetch_factor=4,  # batches loaded ahead per worker
    # model
    model='metala_vit_t',
    model_kwargs={},  # more timm.create_model keyword arguments (e.g. depth, embed_dim)
    pretrained=False,  # start from the model's pretrained weights ...
    pretrained_file=None,  # ... or from this file (safetensors / .pth), via pretrained_cfg_overlay
    num_classes=None,  # null = the number of class folders
    img_size=None,  # null = the model's default
    drop=None,  # head dropout (drop_rate); null = the model's default
    drop_path=0.1,
    grad_checkpointing=False,
    torchcompile=None,  # torch.compile backend ('inductor'), applied in place before accelerate wraps the model
    torchcompile_mode=None,  # its mode: null (default), 'reduce-overhead' (CUDA graphs), 'max-autotune', ...
    # input pipeline (null = the model's pretrained_cfg)
    interpolation=None,  # evaluation resize
    train_interpolation='bicubic',
    mean=None,
    std=None,
    crop_pct=None,
    batch_size=128,  # per process
    val_batch_size=None,  # null = batch_size
    grad_accum_steps=1,
    # optimizer (timm create_optimizer_v2; layer_decay uses the model's group_matcher)
    opt='adamw',
    lr=None,  # null = lr_base * global_batch / lr_base_size (lr_base_scale 'sqrt': its square root)
    lr_base=5e-4,
    lr_base_size=512,
    lr_base_scale='linear',
    weight_decay=0.05,
    momentum=0.9,
    opt_eps=1e-8,
    opt_betas=None,
    layer_decay=None,
    clip_grad=None,  # max gradient norm; null = no clipping
    # schedule (timm create_scheduler_v2)
    sched='cosine',
    sched_on_updates=False,  # step the LR every update instead of every epoch
    epochs=300,
    warmup_epochs=5,
    warmup_lr=1e-6,
    min_lr=1e-5,
    cooldown_epochs=0,
    decay_epochs=90,  # step schedule
    decay_rate=0.1,  # step / plateau schedules
    # augmentation and regularisation (timm create_transform, Mixup)
    no_aug=False,
    scale=[0.08, 1.0],
    ratio=[3 / 4, 4 / 3],
    hflip=0.5,
    vflip=0.0,
    color_jitter=0.3,  # used only without `aa`
    aa='rand-m9-mstd0.5-inc1',  # RandAugment / AutoAugment policy; null = none
    reprob=0.25,
    remode='pixel',
    recount=1,
    aug_repeats=3,  # repeated augmentation (0 = off)
    mixup=0.8,
    cutmix=1.0,
    cutmix_minmax=None,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode='batch',
    smoothing=0.1,
    # EMA of the weights (timm ModelEmaV3); its weights are the exported ones and pick the best epoch
    model_ema=False,
    model_ema_decay=0.99996,
    model_ema_warmup=False,
    # run
    seed=0,
    mixed_precision=None,  # 'no' | 'bf16' | 'fp16'; null = accelerate launch's setting
    output=None,  # null = output/imagenet/<config file name>
    log_interval=50,  # updates between 'train' log records
    checkpoint_interval=0,  # updates between mid-epoch checkpoints; 0 = at epoch ends only
    keep_checkpoints=3,  # newest checkpoints kept; 0 = all
    stop_after_updates=None,  # end this run (saving a checkpoint) after this many updates; the schedule is kept
    log_with=None,  # accelerate trackers: 'tensorboard', 'wandb', 'all', ...
)
# Types of the keys whose default is null.
TYPES = dict(data_dir=str, pretrained_file=str, num_classes=int, img_size=int, drop=float, interpolation=str,
             mean=list, std=list, crop_pct=float, val_batch_size=int, lr=float, opt_betas=list, layer_decay=float,
             clip_grad=float, cutmix_minmax=list, mixed_precision=str, output=str, stop_after_updates=int,
             log_with=(str, list), torchcompile=str, torchcompile_mode=str)
_POSITIVE = ('prefetch_factor', 'batch_size', 'val_batch_size', 'grad_accum_steps', 'epochs', 'lr_base_size',
             'log_interval', 'stop_after_updates', 'num_classes', 'img_size')
_NON_NEGATIVE = ('workers', 'checkpoint_interval', 'keep_checkpoints', 'aug_repeats', 'warmup_epochs',
                 'cooldown_epochs')


def parse_args(argv=None):
    parser = run_arg_parser(__doc__)
    parser.add_argument('--data-dir', help='ImageFolder root with train/ and val/ (overrides data_dir)')
    return parser.parse_args(argv)


def resolve_config(args) -> dict:
    """Settings from DEFAULTS, --config, overrides and the --data-dir/--output flags, checked."""
    cfg = load_config(args.config, args.overrides, DEFAULTS, TYPES)
    if args.data_dir:
        cfg['data_dir'] = args.data_dir
    if args.output:
        cfg['output'] = args.output
    if not cfg['output']:
        cfg['output'] = str(Path('output/imagenet') / (Path(args.config).stem if args.config else cfg['model']))
    for name in _POSITIVE + _NON_NEGATIVE:
        if cfg[name] is not None and (cfg[name] < 0 or cfg[name] == 0 and name in _POSITIVE):
            raise UsageError(f'{name} must be {"positive" if name in _POSITIVE else "non-negative"}, '
                             f'got {cfg[name]}')
    if cfg['mixed_precision'] not in (None, 'no', 'bf16', 'fp16'):
        raise UsageError(f"mixed_precision must be 'no', 'bf16', 'fp16' or null, got {cfg['mixed_precision']!r}")
    if cfg['lr_base_scale'] not in ('linear', 'sqrt'):
        raise UsageError(f"lr_base_scale must be 'linear' or 'sqrt', got {cfg['lr_base_scale']!r}")
    if 'img_size' in cfg['model_kwargs']:
        raise UsageError('set the resolution with img_size, not model_kwargs.img_size (the input pipeline reads it)')
    if mixup_active(cfg) and cfg['batch_size'] % 2:
        raise UsageError(f"mixup/cutmix need an even batch_size, got {cfg['batch_size']}")
    check_torchcompile(cfg)
    return cfg


def mixup_active(cfg) -> bool:
    return cfg['mixup'] > 0 or cfg['cutmix'] > 0 or cfg['cutmix_minmax'] is not None


def check_inputs(cfg, resume: Optional[str]):
    """The checks that need no model: model name, files, data layout (if the data dir is given), resume target.

    Returns (class names or None when the digits set is still to be written, checkpoint folder, resume path).
    """
    if not timm.is_model(cfg['model']):
        close = timm.list_models(f"*{cfg['model'].split('_')[0]}*")[:8]
        raise UsageError(f"unknown model {cfg['model']!r}" + (f"; similar: {', '.join(close)}" if close else ''))
    if cfg['pretrained_file'] and not Path(cfg['pretrained_file']).is_file():
        raise UsageError(f"pretrained_file not found: {cfg['pretrained_file']}")
    classes = check_image_folder(cfg['data_dir'], (cfg['train_split'], cfg['val_split'])) if cfg['data_dir'] else None
    checkpoints = CheckpointDir(Path(cfg['output']) / 'checkpoints', cfg['keep_checkpoints'])
    return classes, checkpoints, checkpoints.resolve_resume(resume)


@dataclasses.dataclass
class Run:
    """What the training loop works with."""
    cfg: dict
    accelerator: object
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    ema: Optional[torch.nn.Module]
    mixup: Optional[object]
    loss_fn: torch.nn.Module
    train_loader: torch.utils.data.DataLoader
    loader_generator: torch.Generator
    batches_per_epoch: int
    val_loader: object
    progress: object
    checkpoints: object
    logger: object
    classes: list
    model_args: dict  # create_model arguments that rebuild the architecture (recorded in config.json)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        classes, checkpoints, resume_from = check_inputs(cfg, args.resume)
        return train(cfg, classes, checkpoints, resume_from, cpu=args.cpu)
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def train(cfg, classes, checkpoints, resume_from, cpu=False) -> int:
    output = Path(cfg['output'])
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=cfg['mixed_precision'], gradient_accumulation_steps=cfg['grad_accum_steps'],
        log_with=cfg['log_with'], project_config=ProjectConfiguration(project_dir=str(output),
                                                                      logging_dir=str(output / 'trackers')))
    torch.backends.cudnn.benchmark = accelerator.device.type == 'cuda'  # as timm's train.py: fixed image shapes
    if cfg['model_ema'] and accelerator.distributed_type == DistributedType.FSDP:
        raise UsageError('model_ema is not supported with FSDP (the EMA copy would be unsharded); use DDP')
    check_compile_launch(cfg, accelerator)
    if cfg['data_dir'] is None:
        with accelerator.main_process_first():
            cfg['data_dir'] = str(write_digits(output / 'digits32'))
        classes = check_image_folder(cfg['data_dir'], (cfg['train_split'], cfg['val_split']))
    if cfg['num_classes'] is not None and cfg['num_classes'] < len(classes):
        raise UsageError(f"num_classes is {cfg['num_classes']} but {cfg['data_dir']} has {len(classes)} classes")
    class_map = {name: index for index, name in enumerate(classes)}
    datasets = {split: create_dataset('', root=str(Path(cfg['data_dir']) / cfg[f'{split}_split']), split=split,
                                      search_split=False, class_map=class_map, is_training=split == 'train')
                for split in ('train', 'val')}
    sampler = build_train_sampler(cfg, datasets['train'], accelerator)
    batches_per_epoch = len(sampler) // cfg['batch_size'] // cfg['grad_accum_steps'] * cfg['grad_accum_steps']
    if batches_per_epoch == 0:
        raise UsageError(f"{len(datasets['train'])} training images make no full step of batch_size "
                         f"{cfg['batch_size']} x grad_accum_steps {cfg['grad_accum_steps']} x "
                         f"{accelerator.num_processes} processes")

    if accelerator.is_main_process:
        checkpoints.remove_partial()  # temp folders of saves that were interrupted
    accelerator.wait_for_everyone()
    set_seed(cfg['seed'], device_specific=True)
    run = build_run(cfg, accelerator, datasets, sampler, batches_per_epoch, classes, checkpoints,
                    progress=TrainProgress(),
                    logger=JsonlLogger(output / 'log.jsonl', enabled=accelerator.is_main_process))
    if accelerator.is_main_process:  # the settings as used (lr and epochs resolved)
        (output / 'config.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
    accelerator.register_for_checkpointing(run.scheduler, run.progress, *([run.ema] if run.ema else []))
    if resume_from:
        accelerator.load_state(str(resume_from))
        _logger.info(f'resumed from {resume_from}: epoch {run.progress.epoch + 1}, batch {run.progress.batch}, '
                     f'update {run.progress.update}')
        run.logger.log('resume', checkpoint=str(resume_from), **run.progress.state_dict())
    if cfg['log_with']:
        accelerator.init_trackers(output.name, config=flatten_config(cfg))
    try:
        fit(run)
    finally:
        accelerator.end_training()
    return 0


def build_train_sampler(cfg, dataset, accelerator):
    """timm's RepeatAugSampler across processes when aug_repeats > 0 and there are several, else a sharded shuffle.
    Both are seeded by epoch (set_epoch), which makes the order reproducible on resume."""
    if cfg['aug_repeats'] and accelerator.num_processes > 1:
        return RepeatAugSampler(dataset, num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                                num_repeats=cfg['aug_repeats'])
    if cfg['aug_repeats']:
        _logger.warning('aug_repeats needs several processes (each repeat goes to another one); off for this run')
    return DistributedSampler(dataset, num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                              shuffle=True, seed=cfg['seed'])


def build_run(cfg, accelerator, datasets, sampler, batches_per_epoch, classes, checkpoints, progress, logger) -> Run:
    """Model, EMA, transforms, loaders, mixup, loss, optimizer and scheduler, prepared by accelerate."""
    num_classes = cfg['num_classes'] or len(classes)
    model_kwargs = dict(cfg['model_kwargs'], num_classes=num_classes, drop_path_rate=cfg['drop_path'])
    for key, name in (('img_size', 'img_size'), ('drop', 'drop_rate')):
        if cfg[key] is not None:
            model_kwargs[name] = cfg[key]
    if cfg['pretrained_file']:
        model_kwargs['pretrained_cfg_overlay'] = dict(file=cfg['pretrained_file'])
    model = timm.create_model(cfg['model'], pretrained=cfg['pretrained'] or bool(cfg['pretrained_file']),
                              **model_kwargs)
    if cfg['grad_checkpointing']:
        model.set_grad_checkpointing(True)
    n_params = sum(p.numel() for p in model.parameters())
    _logger.info(f"{cfg['model']}: {n_params / 1e6:.2f} M parameters, {num_classes} classes")

    data_config = resolve_data_config(
        {k: cfg[k] for k in ('img_size', 'interpolation', 'mean', 'std', 'crop_pct') if cfg[k] is not None},
        model=model)
    # from here on the model's pretrained_cfg describes what it is trained on (and the exported config.json says so)
    model.pretrained_cfg = dict(model.pretrained_cfg, **data_config, num_classes=num_classes)
    datasets['train'].transform = create_transform(
        data_config['input_size'], is_training=True, no_aug=cfg['no_aug'], scale=cfg['scale'], ratio=cfg['ratio'],
        hflip=cfg['hflip'], vflip=cfg['vflip'], color_jitter=cfg['color_jitter'], auto_augment=cfg['aa'],
        interpolation=cfg['train_interpolation'], mean=data_config['mean'], std=data_config['std'],
        re_prob=cfg['reprob'], re_mode=cfg['remode'], re_count=cfg['recount'])
    datasets['val'].transform = create_transform(
        data_config['input_size'], interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode'))
    _logger.info(f"data: {cfg['data_dir']} ({len(datasets['train'])} train / {len(datasets['val'])} val images, "
                 f"{len(classes)} classes), input {tuple(data_config['input_size'])}")

    workers = cfg['workers']
    loader_kwargs = dict(num_workers=workers, pin_memory=cfg['pin_memory'] and accelerator.device.type == 'cuda',
                         persistent_workers=workers > 0 and cfg['persistent_workers'],
                         prefetch_factor=cfg['prefetch_factor'] if workers else None)
    loader_generator = torch.Generator()  # seeds the workers; re-seeded every epoch from (seed, process, epoch)
    # The train loader stays out of accelerator.prepare: its sampler already shards across processes (and
    # RepeatAugSampler must place the repeats of an image on different processes), so accelerate's sharding
    # would split it again. Batches are moved to the device in the loop.
    train_loader = DataLoader(datasets['train'], batch_size=cfg['batch_size'], sampler=sampler, drop_last=True,
                              generator=loader_generator, **loader_kwargs)
    val_loader = DataLoader(datasets['val'], batch_size=cfg['val_batch_size'] or cfg['batch_size'], **loader_kwargs)

    mixup = None
    if mixup_active(cfg):
        mixup = Mixup(mixup_alpha=cfg['mixup'], cutmix_alpha=cfg['cutmix'], cutmix_minmax=cfg['cutmix_minmax'],
                      prob=cfg['mixup_prob'], switch_prob=cfg['mixup_switch_prob'], mode=cfg['mixup_mode'],
                      label_smoothing=cfg['smoothing'], num_classes=num_classes)
        loss_fn = SoftTargetCrossEntropy()  # the smoothing is in mixup's soft targets
    elif cfg['smoothing']:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg['smoothing'])
    else:
        loss_fn = torch.nn.CrossEntropyLoss()

    global_batch = cfg['batch_size'] * accelerator.num_processes * cfg['grad_accum_steps']
    if cfg['lr'] is None:
        ratio = global_batch / cfg['lr_base_size']
        cfg['lr'] = cfg['lr_base'] * (math.sqrt(ratio) if cfg['lr_base_scale'] == 'sqrt' else ratio)
    _logger.info(f"lr {cfg['lr']:.3g} for a global batch of {global_batch}; {batches_per_epoch} batches per epoch "
                 f"and process")
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(SimpleNamespace(**cfg)))
    updates_per_epoch = batches_per_epoch // cfg['grad_accum_steps']
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(SimpleNamespace(**cfg)),
                                                updates_per_epoch=updates_per_epoch)
    cfg['epochs'] = num_epochs  # + cooldown_epochs

    # the EMA copies the plain model (before accelerate wraps or patches it), on the training device
    ema = ModelEmaV3(model, decay=cfg['model_ema_decay'], use_warmup=cfg['model_ema_warmup'],
                     device=accelerator.device) if cfg['model_ema'] else None
    compile_in_place(model, cfg, _logger)  # in place: the weights keep their names in checkpoints, EMA, exports
    model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    return Run(cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
               mixup=mixup, loss_fn=loss_fn, train_loader=train_loader, loader_generator=loader_generator,
               batches_per_epoch=batches_per_epoch, val_loader=val_loader, progress=progress,
               checkpoints=checkpoints, logger=logger, classes=classes,
               model_args={k: v for k, v in model_kwargs.items() if k not in ('drop_path_rate', 'drop_rate',
                                                                               'pretrained_cfg_overlay')})


def fit(run: Run):
    """Epochs from the current progress to the end (or to stop_after_updates)."""
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    output = Path(cfg['output'])
    while progress.epoch < cfg['epochs']:
        epoch = progress.epoch
        reset_peak_memory(accelerator.device)
        train_stats = train_one_epoch(run, epoch)
        if train_stats is None:  # stopped mid-epoch (a checkpoint was saved)
            return
        metrics = evaluate_classifier(run.model, run.val_loader, accelerator)
        ema_metrics = evaluate_classifier(run.ema.module, run.val_loader, accelerator) if run.ema else None
        chosen = ema_metrics or metrics  # of the exported weights
        run.scheduler.step(epoch + 1, chosen['top1'])
        progress.epoch, progress.batch = epoch + 1, 0
        is_best = progress.best_metric is None or chosen['top1'] > progress.best_metric
        if is_best:
            progress.best_metric, progress.best_epoch = chosen['top1'], epoch + 1
        exported = run.ema.module if run.ema else run.model
        for folder in [output] + ([output / 'best'] if is_best else []):
            export_timm_weights(accelerator, exported, folder, run.classes, run.model_args)
        peak = peak_memory_gib(accelerator.device)
        record = dict(epoch=epoch + 1, update=progress.update, **train_stats,
                      **{f'val_{k}': v for k, v in metrics.items() if k != 'count'},
                      **({f'ema_val_{k}': v for k, v in ema_metrics.items() if k != 'count'} if ema_metrics else {}),
                      best_top1=progress.best_metric, best_epoch=progress.best_epoch, peak_mem_gib=peak)
        run.logger.log('epoch', **record)
        accelerator.log({k: v for k, v in record.items() if v is not None}, step=progress.update)
        ema_text = f" | EMA top-1 {ema_metrics['top1']:.2f}" if ema_metrics else ''
        _logger.info(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {train_stats['train_loss']:.4f}, "
                     f"{train_stats['train_img_per_s']:.0f} img/s, peak mem "
                     f"{'n/a' if peak is None else f'{peak:.2f} GiB'} | val loss {metrics['loss']:.4f}, top-1 "
                     f"{metrics['top1']:.2f}, top-5 {metrics['top5']:.2f}{ema_text} | best {progress.best_metric:.2f}"
                     f" (epoch {progress.best_epoch})")
        run.checkpoints.save(accelerator, progress.update)
        if cfg['stop_after_updates'] and progress.update >= cfg['stop_after_updates']:
            return


def train_one_epoch(run: Run, epoch: int) -> Optional[dict]:
    """Trains from progress.batch to the end of `epoch`; returns its stats, or None if stop_after_updates ended
    the run within the epoch."""
    cfg, accelerator, progress, model = run.cfg, run.accelerator, run.progress, run.model
    first_batch = progress.batch
    loader, bar = epoch_batches(accelerator, run.train_loader, run.loader_generator, cfg['seed'], epoch, first_batch,
                                run.batches_per_epoch, cfg['epochs'])
    model.train()
    losses = EpochLosses(accelerator.device)
    for batch_index, (images, targets) in enumerate(loader, start=first_batch):
        if batch_index == run.batches_per_epoch:  # the rest does not fill an accumulation cycle
            break
        images = images.to(accelerator.device, non_blocking=True)
        targets = targets.to(accelerator.device, non_blocking=True)
        if run.mixup:
            images, targets = run.mixup(images, targets)
        with accelerator.accumulate(model):
            loss = run.loss_fn(model(images), targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg['clip_grad']:
                accelerator.clip_grad_norm_(model.parameters(), cfg['clip_grad'])
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        losses.add(loss, images.shape[0] * accelerator.num_processes)
        bar.update(1)
        progress.batch = batch_index + 1
        if not accelerator.sync_gradients:
            continue
        progress.update += 1
        if run.ema:
            run.ema.update(accelerator.unwrap_model(model), step=progress.update)
        run.scheduler.step_update(num_updates=progress.update)
        if progress.update % cfg['log_interval'] == 0:
            mean_loss, img_per_s = losses.take_window(accelerator)
            lr = max(group['lr'] for group in run.optimizer.param_groups)
            run.logger.log('train', epoch=epoch + 1, batch=progress.batch, update=progress.update, loss=mean_loss,
                           lr=lr, img_per_s=img_per_s)
            accelerator.log(dict(train_loss=mean_loss, lr=lr, img_per_s=img_per_s), step=progress.update)
            bar.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{lr:.2e}', img_s=f'{img_per_s:.0f}')
        stop = bool(cfg['stop_after_updates']) and progress.update >= cfg['stop_after_updates']
        interval = cfg['checkpoint_interval']
        if progress.batch < run.batches_per_epoch and (stop or interval and progress.update % interval == 0):
            run.checkpoints.save(accelerator, progress.update)
            if stop:
                bar.close()
                _logger.info(f'stopped after update {progress.update} (stop_after_updates); resume with '
                             f'--resume auto')
                return None
    bar.close()
    return dict(train_loss=losses.epoch_loss_mean(accelerator), train_img_per_s=losses.epoch_meter.rate(),
                train_time_s=losses.epoch_meter.elapsed())


if __name__ == '__main__':
    sys.exit(main())
