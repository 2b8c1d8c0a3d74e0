#!/usr/bin/env python3
"""Evaluates a timm classifier checkpoint on an image folder: loss, top-1, top-5.

    python scripts/validate.py --checkpoint output/metala_vit_s/model.safetensors --data-dir /data/imagenet
    accelerate launch scripts/validate.py --model metala_vit_s --checkpoint weights.safetensors --data-dir DIR

The checkpoint is a weights file (safetensors or .pth, as written by train_imagenet.py). When a timm `config.json`
sits beside it (train_imagenet.py writes one), the architecture, its arguments (img_size, depth, ...), the class
names and the evaluation preprocessing come from there; otherwise give --model (and --model-kwargs if the model
was built with non-default arguments), and the classes are the folder's, in timm's natural-sorted order.
--data-dir is a dataset root holding the split folder (--split, default 'val') or the split folder itself; either
way the images sit in class subfolders. The weights are loaded through timm's
`create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`.
"""
import argparse
import json
import logging
import sys
from pathlib import Path

import timm
import yaml
from accelerate import Accelerator
from timm.data import create_dataset, create_transform, resolve_data_config
from torch.utils.data import DataLoader

import metala_vision  # noqa: F401  (registers the metala_vit models with timm)
from metala_vision.training import UsageError, check_image_folder, evaluate_classifier

_DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help='weights file (model.safetensors, .pth)')
    parser.add_argument('--data-dir', required=True, help='dataset root (holding --split) or the split folder')
    parser.add_argument('--model', help='timm model name (default: the architecture in config.json)')
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='key=value',
                        help='timm.create_model arguments when there is no config.json, e.g. depth=6')
    parser.add_argument('--split', default='val', help="split folder under --data-dir (default 'val')")
    parser.add_argument('--num-classes', type=int, help='classifier size (default: config.json, else the folder)')
    parser.add_argument('--img-size', type=int, help='input resolution (default: config.json / the model)')
    parser.add_argument('--crop-pct', type=float, help='center-crop fraction (default: config.json / the model)')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--mixed-precision', choices=('no', 'bf16', 'fp16'), help="default: accelerate's setting")
    parser.add_argument('--cpu', action='store_true', help='evaluate on the CPU even where a GPU is present')
    parser.add_argument('--results-file', help='also write the metrics as JSON here')
    return parser.parse_args(argv)


def resolve_model(args):
    """(model name, create_model kwargs, class names or None, preprocessing from config.json) -- checked."""
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f'checkpoint not found: {checkpoint}')
    config_path = checkpoint.parent / 'config.json'
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    name = args.model or config.get('architecture')
    if not name:
        raise UsageError(f'no --model given and no config.json beside {checkpoint}')
    if config and args.model and args.model != config['architecture']:
        raise UsageError(f"--model {args.model} but {config_path} is for {config['architecture']}")
    if not timm.is_model(name):
        raise UsageError(f'unknown model {name!r}')
    kwargs = dict(config.get('model_args', {}))
    for item in args.model_kwargs:
        key, sep, value = item.partition('=')
        if not sep:
            raise UsageError(f'--model-kwargs {item!r} is not key=value')
        kwargs[key] = yaml.safe_load(value)
    pretrained_cfg = config.get('pretrained_cfg', {})
    return name, kwargs, config.get('label_names'), {k: pretrained_cfg[k] for k in _DATA_KEYS if k in pretrained_cfg}


def resolve_folder(args):
    """(split folder, its class names): --data-dir/--split if that exists, else --data-dir itself."""
    root = Path(args.data_dir)
    if not root.is_dir():
        raise UsageError(f'data dir not found: {root}')
    if (root / args.split).is_dir():
        return root / args.split, check_image_folder(root, (args.split,))
    try:
        return root, check_image_folder(root.parent, (root.name,))
    except UsageError as e:
        raise UsageError(f'{root} has no {args.split!r} split folder and is no class folder itself: {e}') from None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    try:
        name, model_kwargs, label_names, data_cfg = resolve_model(args)
        folder, folder_classes = resolve_folder(args)
        classes = label_names or folder_classes
        unknown = sorted(set(folder_classes) - set(classes))
        if unknown:
            raise UsageError(f'{folder} has classes the checkpoint was not trained on: {", ".join(unknown[:10])}')
        num_classes = args.num_classes or model_kwargs.get('num_classes') or len(classes)
        if num_classes < len(classes):
            raise UsageError(f'{num_classes} classes in the model but {len(classes)} class names')
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2

    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu)
    model_kwargs.update(num_classes=num_classes, **({'img_size': args.img_size} if args.img_size else {}))
    model = timm.create_model(name, pretrained=True, **model_kwargs, pretrained_cfg_overlay=dict(
        file=str(args.checkpoint), num_classes=num_classes, **data_cfg))
    data_config = resolve_data_config({k: v for k, v in (('img_size', args.img_size), ('crop_pct', args.crop_pct))
                                       if v is not None}, model=model)
    dataset = create_dataset('', root=str(folder), split=args.split, search_split=False,
                             class_map={c: i for i, c in enumerate(classes)})
    dataset.transform = create_transform(data_config['input_size'], interpolation=data_config['interpolation'],
                                         mean=data_config['mean'], std=data_config['std'],
                                         crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode'))
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=accelerator.device.type == 'cuda')
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = accelerator.prepare(loader)
    metrics = dict(model=name, checkpoint=str(args.checkpoint), data=str(folder),
                   **evaluate_classifier(model, loader, accelerator))
    if accelerator.is_main_process:
        print(json.dumps(metrics))
        if args.results_file:
            Path(args.results_file).write_text(json.dumps(metrics, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
