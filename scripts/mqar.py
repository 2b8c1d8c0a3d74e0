"""MQAR recall and decoding speed: MetaLA against softmax attention and GLA of the same width and depth.

Models (all Hugging Face causal LMs with pre-norm RMSNorm blocks, the same SwiGLU MLP, tied embeddings, head dim 64):
  metala     MetaLAForCausalLM (metala_vision.models.metala_lm)
  attention  transformers' LlamaForCausalLM: causal softmax attention through torch SDPA, RoPE, KV cache
  gla        fla's GLAForCausalLM (fla.layers.GatedLinearAttention, expand_k 0.5, short conv 4): CUDA only

MQAR (default mode): each model is trained on fresh Zoology-style MQAR batches (metala_vision.data.mqar) per
sequence length / KV-pair setting and model width, the loss on answer positions only, then scored on held-out
examples (accuracy over answer positions).  Writes <out-dir>/mqar.md and mqar.png (accuracy vs recurrent state size,
one panel per sequence length).

--bench-decode: tokens/s of greedy generate() with a prompt, at batch 1 and 64 for 1024 new tokens, MetaLA (O(1)
state per layer) vs the same-size softmax transformer (KV cache).  Writes <out-dir>/decode.md.

    python scripts/mqar.py                          # full size, on a GPU
    python scripts/mqar.py --quick                  # CPU-sized (minutes)
    python scripts/mqar.py --bench-decode [--quick]
"""
import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from metala_vision.data.mqar import IGNORE_INDEX, multiquery_ar
from metala_vision.models.metala_lm import MetaLAConfig, MetaLAForCausalLM

HEAD_DIM = 64
MODELS = ('metala', 'attention', 'gla')
# (seq_len, num_kv_pairs) settings and widths; Zoology's Figure 2 ranges: seq len 64-512, 4-64 pairs
FULL = dict(settings=[(64, 4), (128, 8), (256, 16), (512, 64)], d_models=[64, 128, 256], vocab=8192, steps=5000,
            batch=64, lr=1e-3, test_examples=1000)
QUICK = dict(settings=[(32, 4), (64, 8)], d_models=[64], vocab=128, steps=800, batch=32, lr=3e-3, test_examples=256)
DECODE_FULL = dict(d_model=1024, layers=24, vocab=32000, prompt=128, new_tokens=1024, batches=[1, 64])
DECODE_QUICK = dict(d_model=64, layers=2, vocab=259, prompt=8, new_tokens=16, batches=[1, 4])


def build_model(kind, vocab_size, d_model, num_layers, max_len, decay_init=None):
    """A causal LM of the given kind, width and depth; every kind gets MetaLA's SwiGLU width.  decay_init: MetaLA's
    (t_min, t_max) gate-bias init (MetaLAConfig.decay_init)."""
    heads = max(1, d_model // HEAD_DIM)
    metala = MetaLAConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=num_layers,
                          num_attention_heads=heads, pad_token_id=0, eos_token_id=None,
                          decay_init=decay_init)
    if kind == 'metala':
        return MetaLAForCausalLM(metala)
    if kind == 'attention':
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=metala.intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=max_len, tie_word_embeddings=True, pad_token_id=0, bos_token_id=None,
            eos_token_id=None, attn_implementation='sdpa'))
    if kind == 'gla':
        from fla.models import GLAConfig, GLAForCausalLM
        return GLAForCausalLM(GLAConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=metala.intermediate_size,
            num_hidden_layers=num_layers, num_heads=heads, expand_k=0.5, expand_v=1.0, use_short_conv=True,
            conv_size=4, tie_word_embeddings=True, pad_token_id=0, bos_token_id=None, eos_token_id=None))
    raise ValueError(f'model kind must be one of {MODELS}, got {kind!r}')


def state_size(kind, d_model, seq_len):
    """Floats of sequence state one layer carries at seq_len tokens: the recurrent state H x K x V (K = V / 2) of
    the linear models, the KV cache 2 x seq_len x d_model of attention."""
    if kind == 'attention':
        return 2 * seq_len * d_model
    heads = max(1, d_model // HEAD_DIM)
    return heads * (d_model // heads // 2) * (d_model // heads)


def answer_logits(model, inputs, labels):
    """(logits [n, vocab] fp32, targets [n]) at the n answer positions (labels != -100) of inputs [B, T]: the LM
    head runs on those positions alone."""
    hidden = model.base_model(input_ids=inputs, use_cache=False).last_hidden_state
    answers = labels != IGNORE_INDEX
    return model.get_output_embeddings()(hidden[answers]).float(), labels[answers]


def train_mqar(model, seq_len, num_kv_pairs, vocab, steps, batch, lr, device, seed=0, log_every=0):
    """AdamW (weight decay 0.1; fused on CUDA), 10% linear warmup then cosine decay, fresh batches each step.
    Returns the mean loss of the first and the last 10% of steps.  The losses stay on the device (no host sync
    per step) until a log line or the end."""
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=lr, betas=(0.9, 0.98), fused=device.type == 'cuda')
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * max(0, s - warmup) / max(1, steps - warmup)))))
    gen = torch.Generator(device).manual_seed(seed)  # batches made on the device
    losses = []
    for step in range(steps):
        inputs, labels = multiquery_ar(batch, seq_len, num_kv_pairs, vocab, generator=gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
            loss = F.cross_entropy(*answer_logits(model, inputs, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if log_every and (step + 1) % log_every == 0:
            print(f'    step {step + 1}/{steps} loss {torch.stack(losses[-log_every:]).mean().item():.3f}', flush=True)
    tenth = max(1, steps // 10)
    return torch.stack(losses[:tenth]).mean().item(), torch.stack(losses[-tenth:]).mean().item()


@torch.no_grad()
def evaluate_mqar(model, seq_len, num_kv_pairs, vocab, num_examples, device, seed=10_000, batch=128):
    """Accuracy over the answer positions of held-out examples (drawn with another seed than training)."""
    model.eval()
    inputs, labels = multiquery_ar(num_examples, seq_len, num_kv_pairs, vocab,
                                   generator=torch.Generator(device).manual_seed(seed))
    hits = total = 0
    for x, y in zip(inputs.split(batch), labels.split(batch)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
            logits, targets = answer_logits(model, x, y)
        hits, total = hits + (logits.argmax(-1) == targets).sum().item(), total + targets.numel()
    return hits / total


def run_mqar(args, device):
    size = QUICK if args.quick else FULL
    kinds = [k for k in args.models if k != 'gla' or device.type == 'cuda']
    if 'gla' in args.models and 'gla' not in kinds:
        print("skipping 'gla': fla's GLA kernels (Triton) need a CUDA GPU")
    settings, d_models = args.settings or size['settings'], args.d_models or size['d_models']
    max_len = max(t for t, _ in settings)
    steps, lr, batch = args.steps or size['steps'], args.lr or size['lr'], args.batch or size['batch']
    results = []
    for seq_len, kv in settings:
        for d_model in d_models:
            for kind in kinds:
                torch.manual_seed(args.seed)
                with device:  # initialised in place
                    model = build_model(kind, size['vocab'], d_model, args.layers, max_len, args.decay_init)
                t0 = time.time()
                first, last = train_mqar(model, seq_len, kv, size['vocab'], steps, batch, lr, device,
                                         seed=args.seed, log_every=args.log_every)
                acc = evaluate_mqar(model, seq_len, kv, size['vocab'], size['test_examples'], device)
                row = dict(model=kind, seq_len=seq_len, kv_pairs=kv, d_model=d_model,
                           state=state_size(kind, d_model, seq_len), loss_first=first, loss_last=last, acc=acc,
                           seconds=time.time() - t0)
                if kind == 'metala' and args.decay_init:
                    row['decay_init'] = args.decay_init
                results.append(row)
                print(json.dumps(row), flush=True)
                write_mqar_report(args, size, steps, batch, lr, kinds, results, device)  # after each run


def write_mqar_report(args, size, steps, batch, lr, kinds, results, device):
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_mqar(results, out / 'mqar.png')
    skipped = '' if 'gla' in kinds or 'gla' not in args.models else ' GLA skipped: no CUDA device.'
    lines = [
        '# MQAR: accuracy vs sequence length and state size',
        '',
        f'`python {" ".join(sys.argv)}` on {device_name(device)}, {datetime.date.today()}, '
        f'torch {torch.__version__}.{skipped}',
        f'{args.layers} layers, head dim {HEAD_DIM}, vocab {size["vocab"]}, {steps} steps of batch {batch} '
        f'(fresh examples), AdamW lr {lr}, accuracy over the answer positions of {size["test_examples"]} '
        'held-out examples. State: floats per layer (recurrent state H x K x V; attention: its KV cache at the '
        'sequence length).',
        '',
        '![accuracy vs state size](mqar.png)',
        '',
        '| seq len | KV pairs | model | d_model | state / layer | loss (first -> last 10%) | accuracy | train s |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in results:
        lines.append(f'| {r["seq_len"]} | {r["kv_pairs"]} | {r["model"]} | {r["d_model"]} | {r["state"]} | '
                     f'{r["loss_first"]:.2f} -> {r["loss_last"]:.2f} | {r["acc"]:.3f} | {r["seconds"]:.0f} |')
    (out / 'mqar.md').write_text('\n'.join(lines) + '\n')


def plot_mqar(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    settings = sorted({(r['seq_len'], r['kv_pairs']) for r in results})
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.4), squeeze=False, sharey=True)
    for ax, (seq_len, kv) in zip(axes[0], settings):
        for kind in MODELS:
            rows = sorted((r['state'], r['acc']) for r in results
                          if r['model'] == kind and (r['seq_len'], r['kv_pairs']) == (seq_len, kv))
            if rows:
                ax.plot(*zip(*rows), marker='o', label=kind, color=f'C{MODELS.index(kind)}')  # one colour a model
        ax.set(xscale='log', title=f'seq {seq_len}, {kv} KV pairs', xlabel='state floats / layer', ylim=(0, 1.02))
    axes[0][0].set_ylabel('MQAR accuracy')
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({platform.processor() or "cpu"})'


@torch.no_grad()
def time_generate(model, batch, prompt_len, new_tokens, vocab, device):
    """(tokens/s of generated tokens, peak GPU memory in GiB or None) of greedy generate()."""
    prompt = torch.randint(3, vocab, (batch, prompt_len), device=device)
    mask = torch.ones_like(prompt)
    model.generate(prompt, attention_mask=mask, max_new_tokens=4, do_sample=False)  # warm-up (kernel compiles)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert out.shape == (batch, prompt_len + new_tokens), out.shape
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == 'cuda' else None
    return batch * new_tokens / seconds, peak


def run_bench_decode(args, device):
    size = DECODE_QUICK if args.quick else DECODE_FULL
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    rows = []
    for kind in [k for k in args.models if k != 'gla']:  # generate() timings: MetaLA and attention
        torch.manual_seed(args.seed)
        with device:
            model = build_model(kind, size['vocab'], size['d_model'], size['layers'],
                                size['prompt'] + size['new_tokens']).to(dtype).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for batch in size['batches']:
            tps, peak = time_generate(model, batch, size['prompt'], size['new_tokens'], size['vocab'], device)
            rows.append((kind, params, batch, tps, peak))
            print(f'{kind:9s} {params:.1f}M params  batch {batch:3d}: {tps:10.1f} tokens/s'
                  + (f', peak {peak:.2f} GiB' if peak is not None else ''), flush=True)
            write_decode_report(args, size, dtype, rows, device)  # after each timing: none is lost
        del model


def write_decode_report(args, size, dtype, rows, device):
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        '# Decoding speed: MetaLA (recurrent state) vs softmax attention (KV cache)',
        '',
        f'`python {" ".join(sys.argv)}` on {device_name(device)}, '
        f'{datetime.date.today()}, torch {torch.__version__}, {str(dtype).removeprefix("torch.")}.',
        f'd_model {size["d_model"]}, {size["layers"]} layers, head dim {HEAD_DIM}, vocab {size["vocab"]}; greedy '
        f'`generate()` of {size["new_tokens"]} new tokens after a {size["prompt"]}-token prompt (prefill included '
        'in the time); attention = LlamaForCausalLM with SDPA and a DynamicCache.',
        '',
        '| model | params (M) | batch | tokens/s | peak GPU memory (GiB) |',
        '|---|---|---|---|---|',
    ]
    for kind, params, batch, tps, peak in rows:
        lines.append(f'| {kind} | {params:.1f} | {batch} | {tps:.1f} | {"-" if peak is None else f"{peak:.2f}"} |')
    (out / 'decode.md').write_text('\n'.join(lines) + '\n')


def seq_len_and_pairs(text):
    """'256:16' -> (256, 16), for --settings."""
    try:
        seq_len, pairs = (int(n) for n in text.split(':'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected SEQ_LEN:KV_PAIRS such as 256:16, got {text!r}') from None
    return seq_len, pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='CPU-sized settings')
    parser.add_argument('--bench-decode', action='store_true', help='time generation instead of training MQAR')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--settings', nargs='+', type=seq_len_and_pairs, metavar='SEQ:PAIRS',
                        help='(sequence length, KV pairs) settings, e.g. 256:16 (default: by size)')
    parser.add_argument('--d-models', nargs='+', type=int, help='model widths (default: by size)')
    parser.add_argument('--steps', type=int, default=None, help='training steps per run (default: by size)')
    parser.add_argument('--lr', type=float, default=None, help='peak learning rate (default: by size)')
    parser.add_argument('--batch', type=int, default=None, help='examples per training step (default: by size)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--decay-init', nargs=2, type=float, metavar=('T_MIN', 'T_MAX'),
                        help="MetaLA's initial memory lengths in tokens (MetaLAConfig.decay_init; default: none, as "
                             "released)")
    parser.add_argument('--log-every', type=int, default=0, help='print the mean training loss every n steps')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out-dir', default='benchmarks')
    args = parser.parse_args()
    device = torch.device(args.device)
    (run_bench_decode if args.bench_decode else run_mqar)(args, device)


if __name__ == '__main__':
    main()
