"""Shared pieces of the training scripts (ImageNet, LRA, language model).

- configs: `run_arg_parser` (the flags every script shares), `load_config` (YAML file + `key=value` / `a.b=value`
  overrides, checked against the script's defaults)
- checkpoints: `CheckpointDir` (atomic `accelerator.save_state` folders, keep-last-N, latest for `--resume auto`),
  `TrainProgress` (epoch / batch / update / best, registered for checkpointing), `export_timm_weights`
- torch.compile: `check_torchcompile` (the settings), `check_compile_launch` (with the Accelerator),
  `compile_in_place` (before accelerate wraps the model)
- data checks: `check_image_folder` (ImageFolder layout, before any model work)
- epochs: `epoch_batches` (the seeded, resumable batch iterator of an epoch and its progress bar)
- logging and meters: `JsonlLogger`, `Throughput`, `reset_peak_memory` / `peak_memory_gib`
- evaluation and seeding: `evaluate_classifier`, `derive_seed`

Bad user input raises `UsageError`; the scripts print its message and exit with status 2.
"""
import argparse
import copy
import dataclasses
import difflib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm


class UsageError(Exception):
    """Bad config, path or data layout: reported as one message, before any model or GPU work."""


# ---------------------------------------------------------------------------------------------------- configs

_NUMBER = re.compile(r'^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$')


def run_arg_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every training script shares: -c/--config, --output, --resume and key=value overrides; a script
    adds its own (data) flags.  doc: the script's docstring (its first paragraph is the description)."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0],
                                     epilog='Settings and their defaults: DEFAULTS in the script.')
    parser.add_argument('-c', '--config', help='YAML file of settings (keys of DEFAULTS)')
    parser.add_argument('--output', help='run folder: log, checkpoints, weights (overrides output)')
    parser.add_argument('--resume', metavar='auto|PATH',
                        help="'auto': continue from the newest checkpoint in the output folder, if any; "
                             "PATH: from that checkpoint folder")
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even where a GPU is present')
    parser.add_argument('overrides', nargs='*', metavar='key=value', help='setting overrides, e.g. lr=1e-3')
    return parser


def load_config(path: Optional[str], overrides=(), defaults: dict = None, types: dict = None) -> dict:
    """Returns `defaults` updated by the YAML file at `path` and then by `overrides` ('key=value', 'a.b=value').

    Every key must exist in `defaults` (an empty dict there, like `model_kwargs: {}`, takes any keys). A value
    must have its default's type (an int is taken for a float); for keys whose default is None, `types` may give
    the type (or tuple of types) by dotted name. Values parse as YAML, so `lr=1e-3`, `aa=null` and
    `scale=[0.5,1]` work. Raises UsageError naming the offending key, with a suggestion for misspellings.
    """
    cfg = copy.deepcopy(defaults or {})
    types = types or {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f'config file not found: {path}')
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f'{path}: not valid YAML: {e}') from None
        if not isinstance(values, dict):
            raise UsageError(f'{path}: expected a mapping of keys to values at the top level')
        _merge(cfg, values, defaults, types, source=str(path))
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise UsageError(f'override {item!r} is not of the form key=value')
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UsageError(f'override {item!r}: value is not valid YAML') from None
        if isinstance(value, (bool, int, float)) and _setting_types(defaults, types, key.strip()) == (str,):
            value = text.strip()  # a str setting takes the text as written: mixed_precision=no, not YAML's False
        nested = value
        for part in reversed(key.strip().split('.')):
            nested = {part: nested}
        _merge(cfg, nested, defaults, types, source=f'override {item!r}')
    return cfg


def _setting_types(defaults: dict, types: dict, name: str):
    """The types a dotted setting name may take (see _expected_types), or None if not known."""
    node = defaults or {}
    for part in name.split('.'):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return _expected_types(node, types.get(name))


def _expected_types(default, declared):
    """A setting's types as a tuple: the declared type(s), else its default's; None if neither is known."""
    expected = declared or (type(default) if default is not None else None)
    return expected if expected is None or isinstance(expected, tuple) else (expected,)


def _merge(cfg: dict, values: dict, schema: dict, types: dict, source: str, prefix: str = ''):
    for key, value in values.items():
        name = prefix + str(key)
        if schema and key not in schema:
            hint = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            raise UsageError(f'{source}: unknown config key {name!r}' + (f' (did you mean {prefix + hint[0]!r}?)'
                                                                          if hint else ''))
        default = schema.get(key) if schema else None
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise UsageError(f'{source}: {name!r} must be a mapping, got {value!r}')
            _merge(cfg.setdefault(key, {}), value, default, types, source, name + '.')
        elif schema:
            cfg[key] = _coerce(value, default, types.get(name), name, source)
        else:  # free-form mapping (e.g. model_kwargs): any key, any YAML value
            cfg[key] = value


def _coerce(value, default, declared, name: str, source: str):
    """`value` checked against the type of `default` (or the declared type when the default is None)."""
    expected = _expected_types(default, declared)
    if value is None or expected is None:
        return value
    if isinstance(value, bool):  # bool is an int subclass: accept it only where bool is expected
        ok = bool in expected
    else:
        if float in expected and (isinstance(value, int) and int not in expected
                                  or isinstance(value, str) and _NUMBER.match(value)):
            value = float(value)  # 1 -> 1.0, and '5e-4', which PyYAML reads as a string (no dot)
        ok = isinstance(value, expected)
    if not ok:
        names = ' or '.join(t.__name__ for t in expected)
        hint = " (YAML reads no, yes, on, off as booleans: quote the string, 'no')" \
            if isinstance(value, bool) and str in expected else ''
        raise UsageError(f'{source}: {name!r} must be {names}, got {value!r}{hint}')
    return value


def flatten_config(cfg: dict, prefix: str = '') -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}, lists and None as strings: for trackers that take scalars only."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f'{prefix}{key}.'))
        else:
            flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


# ---------------------------------------------------------------------------------------------------- torch.compile

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def check_torchcompile(cfg: dict):
    """The settings `torchcompile` (a torch.compile backend, as timm's --torchcompile; null: eager) and
    `torchcompile_mode` (null or one of COMPILE_MODES, with a backend)."""
    if cfg['torchcompile'] and cfg['torchcompile'] not in torch._dynamo.list_backends(exclude_tags=()):
        raise UsageError(f"torchcompile must be a torch.compile backend of {torch._dynamo.list_backends()}, "
                         f"got {cfg['torchcompile']!r}")
    if cfg['torchcompile_mode'] is not None and (not cfg['torchcompile'] or cfg['torchcompile_mode'] not in
                                                 COMPILE_MODES):
        raise UsageError(f"torchcompile_mode must be one of {COMPILE_MODES} with a torchcompile backend set, got "
                         f"{cfg['torchcompile_mode']!r} (torchcompile {cfg['torchcompile']!r})")


def check_compile_launch(cfg: dict, accelerator):
    """What torch.compile in place does not go with, checked once the Accelerator exists: accelerate's own dynamo
    option (it would rename the weights _orig_mod.* in checkpoints and exports) and, with torchcompile, FSDP (not
    tested)."""
    from accelerate import DistributedType
    from accelerate.utils import DynamoBackend
    if accelerator.state.dynamo_plugin.backend != DynamoBackend.NO:
        raise UsageError(f"accelerate's dynamo backend ({accelerator.state.dynamo_plugin.backend.value}) would rename "
                         "the weights (_orig_mod.*) in checkpoints and exports; launch without it and set "
                         "torchcompile=<backend> instead, which compiles the model in place")
    if cfg['torchcompile'] and accelerator.distributed_type == DistributedType.FSDP:
        raise UsageError('torchcompile is not supported with FSDP here (not tested); use DDP or leave it null')


def compile_in_place(model, cfg: dict, logger):
    """model.compile(...) as `torchcompile` / `torchcompile_mode` say (nothing without a backend), before accelerate
    wraps the model: in place, so that the weights keep their names in checkpoints and exports and a run may resume
    with or without it."""
    if cfg['torchcompile']:
        model.compile(backend=cfg['torchcompile'], mode=cfg['torchcompile_mode'])
        logger.info(f"model compiled in place: backend {cfg['torchcompile']}, mode {cfg['torchcompile_mode']}")


# ---------------------------------------------------------------------------------------------------- data checks

def check_image_folder(root, splits=('train', 'val')) -> list:
    """Checks the ImageFolder layout `root/<split>/<class>/<image>` and returns the class names of splits[0].

    Classes are natural-sorted, the order timm's folder reader gives them indices. Raises UsageError for a
    missing root or split, a split with no class subfolders or with images directly in it, a class folder
    without images, and a class in a later split that splits[0] lacks.
    """
    from timm.data.readers.img_extensions import get_img_extensions
    from timm.utils.misc import natural_key

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f'data dir not found: {root}')
    extensions = get_img_extensions(as_set=True)
    layout = f'expected {root}/<split>/<class>/<image> with splits {", ".join(splits)}'
    classes_per_split = []
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise UsageError(f'no {split!r} split in {root} (subfolders: {present or "none"}); {layout}')
        class_dirs, loose_images = [], 0
        for entry in os.scandir(folder):
            if entry.is_dir():
                class_dirs.append(entry)
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                loose_images += 1
        if loose_images:
            raise UsageError(f'{folder} holds {loose_images} images directly; put them in class subfolders '
                             f'({layout})')
        if not class_dirs:
            raise UsageError(f'{folder} has no class subfolders; {layout}')
        empty = sorted((d.name for d in class_dirs if not _holds_image(d.path, extensions)), key=natural_key)
        if empty:
            raise UsageError(f'{folder}: {len(empty)} class folder(s) without images: {", ".join(empty[:10])}'
                             + (' ...' if len(empty) > 10 else ''))
        classes_per_split.append(sorted((d.name for d in class_dirs), key=natural_key))
    for split, classes in zip(splits[1:], classes_per_split[1:]):
        unknown = sorted(set(classes) - set(classes_per_split[0]))
        if unknown:
            raise UsageError(f'{root / split} has classes that {root / splits[0]} lacks: {", ".join(unknown[:10])}')
    return classes_per_split[0]


def _holds_image(folder: str, extensions) -> bool:
    with os.scandir(folder) as entries:
        return any(os.path.splitext(e.name)[1].lower() in extensions for e in entries)


# ---------------------------------------------------------------------------------------------------- checkpoints

@dataclasses.dataclass
class TrainProgress:
    """Where a run stands; register it with `accelerator.register_for_checkpointing` to have it saved and restored."""
    epoch: int = 0  # the epoch in progress (or the next to start)
    batch: int = 0  # batches of `epoch` already trained (> 0 only in mid-epoch checkpoints)
    update: int = 0  # optimizer updates so far
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict):
        for key, value in state.items():
            setattr(self, key, value)


class CheckpointDir:
    """`root/checkpoint-<update>` folders written by `accelerator.save_state`.

    A save goes to `root/.tmp-checkpoint-<update>` and is renamed into place once every process has finished,
    so an interrupted save never replaces or damages a complete checkpoint; leftover temp folders are ignored
    by `latest()` and removed by `remove_partial()`. Only the newest `keep_last` (0: all) are kept. The folder
    must be shared by all processes (one filesystem).
    """
    _NAME = re.compile(r'^checkpoint-(\d+)$')
    _TMP = '.tmp-'

    def __init__(self, root, keep_last: int = 0):
        self.root = Path(root)
        self.keep_last = keep_last

    def complete(self) -> list:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := self._NAME.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[Path]:
        found = self.complete()
        return found[-1] if found else None

    def partial(self) -> list:
        return sorted(p for p in self.root.glob(self._TMP + '*')) if self.root.is_dir() else []

    def remove_partial(self):
        for path in self.partial():
            shutil.rmtree(path, ignore_errors=True)

    def save(self, accelerator, update: int) -> Path:
        """Saves the accelerator state (all processes must call this) and returns the checkpoint folder."""
        final = self.root / f'checkpoint-{update:09d}'
        staging = self.root / f'{self._TMP}{final.name}'
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_tree(staging)
            if final.exists():  # same update saved before (e.g. a rerun): swap, then drop the old one
                retired = self.root / f'{self._TMP}old-{final.name}'
                shutil.rmtree(retired, ignore_errors=True)
                os.rename(final, retired)
                os.rename(staging, final)
                shutil.rmtree(retired)
            else:
                os.rename(staging, final)
            _fsync_dir(self.root)
            if self.keep_last > 0:
                for old in self.complete()[:-self.keep_last]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def resolve_resume(self, resume: Optional[str]) -> Optional[Path]:
        """The checkpoint to resume from: None for a fresh start, the latest for 'auto' (None if there is none)."""
        if not resume:
            if self.complete():
                raise UsageError(f'{self.root} already holds checkpoints; pass --resume auto to continue that run '
                                 f'or choose another --output')
            return None
        if resume == 'auto':
            return self.latest()
        path = Path(resume)
        if not path.is_dir() or not any(path.glob('random_states_*.pkl')):
            raise UsageError(f'--resume {resume}: not a checkpoint folder (expected one written by save_state, '
                             f'like {self.root}/checkpoint-000001000)')
        return path


def _fsync_tree(folder: Path):
    for path in folder.rglob('*'):
        if path.is_file():
            with open(path, 'rb') as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_safetensors(state_dict: dict, path: Path, metadata: Optional[dict] = None):
    """Writes `state_dict` (CPU copies of its tensors) to `path` as safetensors, through a temp name and a rename:
    the file appears complete or not at all.  metadata: string values, beside {'format': 'pt'}."""
    from safetensors.torch import save_file

    staging = path.with_name(f'.{path.name}.tmp')
    save_file({k: v.detach().to('cpu', copy=True).contiguous() for k, v in state_dict.items()}, staging,
              metadata={'format': 'pt', **(metadata or {})})
    os.replace(staging, path)


def export_timm_weights(accelerator, model, directory, label_names=None, model_args=None) -> Path:
    """Writes `directory/model.safetensors` and timm's `config.json` for `model` (prepared or plain); returns the
    weights path. All processes must call it (the state dict is gathered under FSDP); the main process writes.

    config.json takes the preprocessing from `model.pretrained_cfg`, `label_names` (class names by index) and
    `model_args` (the create_model arguments that rebuild the architecture, e.g. img_size, depth).

    Load with `timm.create_model('local-dir:<directory>', pretrained=True)`, or with
    `timm.create_model(name, pretrained=True, num_classes=N, pretrained_cfg_overlay=dict(file=<weights>,
    num_classes=N))`. Each file is written to a temp name and renamed, so readers never see a partial file.
    """
    from timm.models._hub import save_config_for_hf

    directory = Path(directory)
    state_dict = accelerator.get_state_dict(model)
    weights = directory / 'model.safetensors'
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(state_dict, weights)
        save_config_for_hf(accelerator.unwrap_model(model), directory / '.config.json.tmp',
                           model_config=dict(label_names=list(label_names)) if label_names else None,
                           model_args=model_args)
        os.replace(directory / '.config.json.tmp', directory / 'config.json')
    accelerator.wait_for_everyone()
    return weights


# ---------------------------------------------------------------------------------------------------- logging, meters

def epoch_batches(accelerator, loader, generator, seed: int, epoch: int, first_batch: int, total: int, epochs: int):
    """(batches of `epoch` from `first_batch` on, a tqdm bar on the local main process).  The sampler and the
    loader's generator are seeded by (seed, process, epoch), so a resumed epoch draws the same order and skips the
    batches already trained."""
    loader.sampler.set_epoch(epoch)
    generator.manual_seed(derive_seed(seed, accelerator.process_index, epoch))
    batches = accelerator.skip_first_batches(loader, first_batch) if first_batch else loader
    bar = tqdm(total=total, initial=first_batch, desc=f'epoch {epoch + 1}/{epochs}',
               disable=not accelerator.is_local_main_process, dynamic_ncols=True, mininterval=1.0)
    return batches, bar


class JsonlLogger:
    """Appends one JSON object per call to `path` ({'event': ..., 'time': unix seconds, **fields})."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields):
        if self.enabled:
            with open(self.path, 'a') as f:
                f.write(json.dumps({'event': event, 'time': round(time.time(), 3), **fields}) + '\n')


def read_jsonl(path) -> list:
    """The records of a JSON-lines log."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Throughput:
    """Items per second since the last `reset()` (read it after a host sync, e.g. `loss.item()`)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.count, self.start = 0, time.perf_counter()

    def update(self, n: int):
        self.count += n

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        return self.count / max(self.elapsed(), 1e-9)


class EpochLosses:
    """The training loss and throughput of an epoch and of the current log window, kept on the device (no sync
    per batch).  `add` each batch's loss and item count (images, tokens, all processes together)."""

    def __init__(self, device: torch.device):
        self.epoch_loss = torch.zeros((), device=device)
        self.window_loss = torch.zeros((), device=device)
        self.batches = self.window_batches = 0
        self.epoch_meter, self.window_meter = Throughput(), Throughput()

    def add(self, loss: torch.Tensor, items: int):
        loss = loss.detach()
        self.epoch_loss += loss
        self.window_loss += loss
        self.batches += 1
        self.window_batches += 1
        self.epoch_meter.update(items)
        self.window_meter.update(items)

    def take_window(self, accelerator) -> tuple:
        """(mean loss over the window's batches and processes, items/s) since the last call; starts a new window."""
        mean_loss = accelerator.reduce(self.window_loss / self.window_batches, 'mean').item()
        rate = self.window_meter.rate()
        self.window_loss.zero_()
        self.window_batches = 0
        self.window_meter.reset()
        return mean_loss, rate

    def epoch_loss_mean(self, accelerator) -> float:
        """Mean loss over this epoch's batches and the processes."""
        return accelerator.reduce(self.epoch_loss / max(self.batches, 1), 'mean').item()


def reset_peak_memory(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> Optional[float]:
    """Peak allocated CUDA memory since `reset_peak_memory`, in GiB; None on other devices."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None


# ---------------------------------------------------------------------------------------------------- eval, seeds

@torch.no_grad()
def evaluate_classifier(model, loader, accelerator) -> dict:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) of `model` over `loader` (prepared by `accelerator`, so
    each process sees its shard; `gather_for_metrics` drops the padding of the last batch)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    hits = torch.zeros(2, dtype=torch.int64, device=accelerator.device)
    count = 0
    for images, targets in loader:
        with accelerator.autocast():
            logits = model(images)
        losses = F.cross_entropy(logits.float(), targets, reduction='none')
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
        top1, top5 = ranked[:, 0], ranked.any(dim=1)
        losses, top1, top5 = accelerator.gather_for_metrics((losses, top1, top5))
        loss_sum += losses.double().sum()
        hits += torch.stack([top1.sum(), top5.sum()])
        count += losses.numel()
    if count == 0:
        raise ValueError('evaluation loader is empty')
    top1, top5 = (hits.double() * 100 / count).tolist()
    return dict(loss=loss_sum.item() / count, top1=top1, top5=top5, count=count)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys, e.g. derive_seed(seed, process_index, epoch)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))
