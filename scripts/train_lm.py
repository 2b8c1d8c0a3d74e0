#!/usr/bin/env python3
"""Language-model training of MetaLAForCausalLM with accelerate on a text file or a folder of text files.

    accelerate launch scripts/train_lm.py --data corpus/ --output output/lm [key=value ...]
    python scripts/train_lm.py --data README.md --output /tmp/lm model.hidden_size=64 model.num_hidden_layers=2 \
        model.num_attention_heads=1 seq_len=64 batch_size=8 updates=50      # a CPU minute

Settings come from DEFAULTS below, then the YAML file (--config), then `key=value` overrides (dotted for the model:
`model.hidden_size=512`); unknown keys are errors (metala_vision.training.load_config).  The text is tokenized
byte-level by default (no download); `tokenizer: PATH` loads a local Hugging Face tokenizer folder instead.  The
last `val_fraction` of the token stream is held out.  Each update trains on `grad_accum_steps` batches of
`batch_size` random windows of `seq_len` tokens per process, drawn from a seed derived from (seed, process, update),
so a resumed run sees the batches an uninterrupted one would.

Outputs in --output: `log.jsonl` ('train' every log_interval updates: loss, perplexity, lr, tokens/s; 'eval':
validation loss and perplexity; 'resume'), `config.yaml`, `checkpoints/checkpoint-<update>/` (accelerator.save_state:
model, optimizer, scheduler, RNG states, progress; atomic, newest `keep_checkpoints` kept) and `model/` (the latest
weights with save_pretrained, and the tokenizer: `AutoModelForCausalLM.from_pretrained(OUTPUT/model)` after
`import metala_vision.models.metala_lm`).  `--resume auto` continues from the newest checkpoint (or starts fresh
when there is none).
"""
import logging
import math
import sys
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from metala_vision.data.text import byte_tokenizer, encode_files, random_windows, sequential_windows, text_files
from metala_vision.models.metala_lm import MetaLAConfig, MetaLAForCausalLM
from metala_vision.training import (CheckpointDir, JsonlLogger, Throughput, TrainProgress, UsageError, derive_seed,
                                    load_config, run_arg_parser)

_logger = get_logger('train_lm')

DEFAULTS = dict(
    # data
    data=None,  # a text file, or a folder of .txt / .md / .text files
    tokenizer=None,  # null = byte-level (259 ids); else a local Hugging Face tokenizer folder
    val_fraction=0.05,  # tail of the token stream held out for validation
    seq_len=512,
    # model (MetaLAConfig fields; vocab and special ids come from the tokenizer)
    model=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=None, conv_size=4,
               gate_norm=16.0, attn_backend='metala', tie_word_embeddings=True, initializer_range=0.02),
    grad_checkpointing=False,
    # optimisation
    batch_size=16,  # windows per process and batch
    grad_accum_steps=1,
    updates=2000,
    lr=1e-3,
    min_lr=1e-4,  # end of the cosine decay
    warmup_updates=100,
    weight_decay=0.1,
    betas=[0.9, 0.95],
    clip_grad=1.0,  # max gradient norm; null = no clipping
    # run
    seed=0,
    mixed_precision=None,  # 'no' | 'bf16' | 'fp16'; null = accelerate launch's setting
    output=None,
    log_interval=10,
    eval_interval=200,  # updates between validations (and at the end)
    eval_windows=256,  # validation windows per evaluation at most
    checkpoint_interval=500,  # updates between checkpoints (and at the end)
    keep_checkpoints=3,
    stop_after_updates=None,  # end this run (with a checkpoint) after this many updates; the schedule is kept
    sample_prompt='The ',  # after training, print a sampled continuation of this prompt ...
    sample_tokens=200,  # ... of this many tokens (0 = none)
)
TYPES = {'data': str, 'tokenizer': str, 'model.intermediate_size': int, 'clip_grad': float, 'mixed_precision': str,
         'output': str, 'stop_after_updates': int}
_POSITIVE = ('seq_len', 'batch_size', 'grad_accum_steps', 'updates', 'log_interval', 'eval_interval',
             'eval_windows', 'checkpoint_interval', 'stop_after_updates')


def parse_args(argv=None):
    parser = run_arg_parser(__doc__)
    parser.add_argument('--data', help='text file or folder (overrides data)')
    return parser.parse_args(argv)


def resolve_config(args) -> dict:
    cfg = load_config(args.config, args.overrides, DEFAULTS, TYPES)
    cfg['data'] = args.data or cfg['data']
    cfg['output'] = args.output or cfg['output']
    if not cfg['data']:
        raise UsageError('no training text: pass --data FILE_OR_FOLDER (or data: in the config)')
    if not cfg['output']:
        cfg['output'] = str(Path('output/lm') / (Path(args.config).stem if args.config else Path(cfg['data']).stem))
    for name in _POSITIVE:
        if cfg[name] is not None and cfg[name] <= 0:
            raise UsageError(f'{name} must be positive, got {cfg[name]}')
    if not 0 < cfg['val_fraction'] < 1:
        raise UsageError(f"val_fraction must lie in (0, 1), got {cfg['val_fraction']}")
    if cfg['mixed_precision'] not in (None, 'no', 'bf16', 'fp16'):
        raise UsageError(f"mixed_precision must be 'no', 'bf16', 'fp16' or null, got {cfg['mixed_precision']!r}")
    return cfg


def load_tokenizer(path):
    if path is None:
        return byte_tokenizer()
    from transformers import AutoTokenizer
    if not Path(path).is_dir():
        raise UsageError(f'tokenizer folder not found: {path} (only local tokenizers are loaded)')
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_tokens(cfg, tokenizer):
    """(train tokens, validation tokens), both 1-D int64."""
    try:
        tokens = encode_files(text_files(cfg['data']), tokenizer)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    n_val = int(tokens.numel() * cfg['val_fraction'])
    if min(n_val, tokens.numel() - n_val) < cfg['seq_len']:
        raise UsageError(f"{tokens.numel()} tokens leave fewer than seq_len={cfg['seq_len']} for training or "
                         f"validation (val_fraction={cfg['val_fraction']})")
    return tokens[:-n_val], tokens[-n_val:]


def lr_factor(cfg, update):
    """Linear warmup to 1, then cosine decay to min_lr / lr at `updates`."""
    if update < cfg['warmup_updates']:
        return (update + 1) / cfg['warmup_updates']
    progress = min(1.0, (update - cfg['warmup_updates']) / max(1, cfg['updates'] - cfg['warmup_updates']))
    floor = cfg['min_lr'] / cfg['lr']
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        tokenizer = load_tokenizer(cfg['tokenizer'])
        train_tokens, val_tokens = load_tokens(cfg, tokenizer)
        checkpoints = CheckpointDir(Path(cfg['output']) / 'checkpoints', cfg['keep_checkpoints'])
        resume_from = checkpoints.resolve_resume(args.resume)
        return train(cfg, tokenizer, train_tokens, val_tokens, checkpoints, resume_from, cpu=args.cpu)
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def train(cfg, tokenizer, train_tokens, val_tokens, checkpoints, resume_from, cpu=False) -> int:
    output = Path(cfg['output'])
    accelerator = Accelerator(cpu=cpu, mixed_precision=cfg['mixed_precision'],
                              gradient_accumulation_steps=cfg['grad_accum_steps'])
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / 'config.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
        checkpoints.remove_partial()
    accelerator.wait_for_everyone()
    set_seed(cfg['seed'], device_specific=False)  # the same initial weights on every process

    config = MetaLAConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          **{k: v for k, v in cfg['model'].items() if v is not None})
    model = MetaLAForCausalLM(config)
    if cfg['grad_checkpointing']:
        model.activation_checkpointing_enable()
    _logger.info(f'MetaLA LM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; '
                 f'{train_tokens.numel()} train / {val_tokens.numel()} validation tokens')
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=cfg['weight_decay']),
                                   dict(params=no_decay, weight_decay=0.0)], lr=cfg['lr'], betas=tuple(cfg['betas']))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: lr_factor(cfg, update))
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(scheduler, progress)
    logger = JsonlLogger(output / 'log.jsonl', enabled=accelerator.is_main_process)
    if resume_from:
        accelerator.load_state(str(resume_from))
        _logger.info(f'resumed from {resume_from} at update {progress.update}')
        logger.log('resume', checkpoint=str(resume_from), update=progress.update)

    meter, window_loss, window_updates = Throughput(), torch.zeros((), device=accelerator.device), 0
    end = min(cfg['updates'], cfg['stop_after_updates'] or cfg['updates'])
    model.train()
    while progress.update < end:
        for micro in range(cfg['grad_accum_steps']):
            gen = torch.Generator().manual_seed(derive_seed(cfg['seed'], accelerator.process_index, progress.update,
                                                            micro))
            ids = random_windows(train_tokens, cfg['batch_size'], cfg['seq_len'], gen).to(accelerator.device)
            with accelerator.accumulate(model), accelerator.autocast():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg['clip_grad']:
                    accelerator.clip_grad_norm_(model.parameters(), cfg['clip_grad'])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach() / cfg['grad_accum_steps']
            meter.update(ids.numel() * accelerator.num_processes)
        scheduler.step()
        progress.update += 1
        window_updates += 1
        update = progress.update
        if update % cfg['log_interval'] == 0:
            mean_loss = accelerator.reduce(window_loss, 'mean').item() / window_updates
            record = dict(update=update, loss=mean_loss, ppl=math.exp(min(mean_loss, 50)),
                          lr=scheduler.get_last_lr()[0], tokens_per_s=meter.rate())
            logger.log('train', **record)
            _logger.info(f"update {update}/{cfg['updates']}: loss {mean_loss:.4f}, perplexity {record['ppl']:.2f}, "
                         f"lr {record['lr']:.2e}, {record['tokens_per_s']:.0f} tokens/s")
            window_loss.zero_()
            window_updates = 0
            meter.reset()
        if update % cfg['eval_interval'] == 0 or update == end:
            val_loss = evaluate(model, val_tokens, cfg, accelerator)
            val_ppl = math.exp(min(val_loss, 50))
            logger.log('eval', update=update, val_loss=val_loss, val_ppl=val_ppl)
            _logger.info(f'update {update}: validation loss {val_loss:.4f}, perplexity {val_ppl:.2f}')
            model.train()
        if update % cfg['checkpoint_interval'] == 0 or update == end:
            checkpoints.save(accelerator, update)
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(output / 'model')
                tokenizer.save_pretrained(output / 'model')
    if progress.update < cfg['updates']:
        _logger.info(f'stopped after update {progress.update} (stop_after_updates); resume with --resume auto')
    elif cfg['sample_tokens'] and accelerator.is_main_process:
        print_sample(accelerator.unwrap_model(model), tokenizer, cfg, accelerator.device)
    accelerator.end_training()
    return 0


@torch.no_grad()
def evaluate(model, tokens, cfg, accelerator) -> float:
    """Mean next-token loss over up to eval_windows consecutive windows of the validation tokens, split across
    the processes."""
    model.eval()
    windows = sequential_windows(tokens, cfg['seq_len'])[:cfg['eval_windows']]
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # loss sum, predicted tokens
    for ids in windows[accelerator.process_index::accelerator.num_processes].split(cfg['batch_size']):
        ids = ids.to(accelerator.device)
        with accelerator.autocast():
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        count = ids.shape[0] * (ids.shape[1] - 1)
        total += torch.stack([loss.double() * count, torch.tensor(count, dtype=torch.float64, device=ids.device)])
    total = accelerator.reduce(total, 'sum')
    return (total[0] / total[1]).item()


@torch.no_grad()
def print_sample(model, tokenizer, cfg, device):
    model.eval()
    prompt = tokenizer(cfg['sample_prompt'], add_special_tokens=False, return_tensors='pt').to(device)
    out = model.generate(**prompt, max_new_tokens=cfg['sample_tokens'], do_sample=True, top_k=50, temperature=0.8)
    print(f"--- sample ({cfg['sample_tokens']} tokens after {cfg['sample_prompt']!r}) ---")
    print(tokenizer.decode(out[0], skip_special_tokens=True))


if __name__ == '__main__':
    sys.exit(main())
