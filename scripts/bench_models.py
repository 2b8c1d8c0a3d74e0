"""Throughput and peak memory of metala_vit_t/s/b against timm's DeiT, side by side on one GPU.

Inference: bf16 autocast, batch 256 at 224 px; training step: bf16 autocast, fwd + bwd + fused AdamW, batch 128 at
224 px; batches shrink with the token count at 512 and 1024 px (the same batch for both models of a pair).
The two models of a pair are on the GPU together and take turns (CUDA events), so that a slow stretch of the host
lands on both; peak memory of each step; parameters; GFLOPs of one 224 px image counted by torch.utils.flop_counter
on the CPU (our operator counted through its PyTorch path).
Writes benchmarks/models.md and models.json beside it; --plot-only redraws models.png from the JSON (matplotlib).

    python scripts/bench_models.py [--res 224 512 1024] [--pairs t s b] [--out benchmarks/models.md]
                                   [--compile [default | reduce-overhead | max-autotune-no-cudagraphs]]

--device cpu runs the same steps on the CPU (no memory figures): a check of the script, not a benchmark.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from timm.utils import ParseKwargs
from torch.utils.flop_counter import FlopCounterMode

import metala_vision  # noqa: F401  (registers the metala_vit models)

PAIRS = {'t': ('metala_vit_t', 'deit_tiny_patch16_224'), 's': ('metala_vit_s', 'deit_small_patch16_224'),
         'b': ('metala_vit_b', 'deit_base_patch16_224')}
INFER_BATCH, TRAIN_BATCH = 256, 128
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune-no-cudagraphs')
WARMUP_STEPS, TIMINGS = 10, 5  # each img/s: the median of TIMINGS rounds of --iters steps, after the warm-up


def batch_at(base, res):
    """Batch at res px: base at 224 px and below, scaled down by the token count above (at least 4)."""
    return max(4, min(base, int(base * (224 / res) ** 2) // 2 * 2))


def create(name, res, ours_kwargs=None):
    """A model of a pair at res px; ours_kwargs go to ours (the metala_vit models) only, e.g. self_aug=False."""
    kwargs = dict(img_size=res) if name.startswith('deit') else dict(ours_kwargs or {})
    return timm.create_model(name, num_classes=1000, **kwargs)


def gflops_at_224(name):
    """GFLOPs of one image, counted on the CPU.  SDPA runs its math backend there: the CPU's fused kernel has no
    flop formula, and DeiT's attention products would go uncounted."""
    model = create(name, 224).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


class Bench:
    """One model at res px on the device, with its inference step (no grad) and training step (fwd + bwd + AdamW),
    bf16 autocast.  Built in turn, each step runs WARMUP_STEPS times (compiles, autotunes, the allocator) and then
    once more for its peak memory: the bytes allocated above what was allocated before the model was created (the
    other model of a pair may sit on the GPU meanwhile), with only that step's inputs allocated; none under CUDA
    graphs (see peak_gib).  seconds() times it."""

    def __init__(self, name, res, device, batches=(INFER_BATCH, TRAIN_BATCH), compile_mode=None, ours_kwargs=None):
        base = torch.cuda.memory_allocated() if device == 'cuda' else 0
        self.device, self.compile_mode = device, compile_mode
        self.model = create(name, res, ours_kwargs).to(device)
        if compile_mode:
            self.model = torch.compile(self.model, mode=None if compile_mode == 'default' else compile_mode)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device == 'cuda')
        self.row = dict(model=name, res=res, compiled=compile_mode or False, infer_batch=batch_at(batches[0], res),
                        train_batch=batch_at(batches[1], res))
        for kind in ('infer', 'train'):
            self.inputs = {kind: self.batch(kind)}
            self.seconds(kind, WARMUP_STEPS)
            self.row[f'{kind}_gib'] = self.peak_gib(kind, base)
        self.inputs['infer'] = self.batch('infer')

    def batch(self, kind):
        b, res = self.row[f'{kind}_batch'], self.row['res']
        x = torch.randn(b, 3, res, res, device=self.device)
        return x if kind == 'infer' else (x, torch.randint(0, 1000, (b,), device=self.device))

    def infer(self):
        with torch.no_grad(), torch.autocast(self.device, dtype=torch.bfloat16):
            self.model(self.inputs['infer'])

    def train(self):
        x, y = self.inputs['train']
        with torch.autocast(self.device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def seconds(self, kind, iters):
        """Seconds per step over iters steps of kind ('infer' or 'train'): CUDA events on a GPU."""
        self.model.train(kind == 'train')
        step = getattr(self, kind)
        if self.device != 'cuda':
            start = time.perf_counter()
            for _ in range(iters):
                step()
            return (time.perf_counter() - start) / iters
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters

    def peak_gib(self, kind, base):
        """Peak GiB of one step of kind above base; nan on the CPU (no allocator statistics) and under CUDA graphs
        (mode 'reduce-overhead'), where they read too little: an H200 read 0.32 GiB for a training step of
        metala_vit_s at batch 128, about its weights, gradients and AdamW state alone."""
        if self.device != 'cuda' or self.compile_mode == 'reduce-overhead':
            return float('nan')
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.seconds(kind, 1)
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 30


def measure_pair(names, res, iters, device, batches=(INFER_BATCH, TRAIN_BATCH), compile_mode=None,
                 ours_kwargs=None):
    """Rows (img/s, peak GiB) of the models of a pair at res px.  Their timings take turns, TIMINGS rounds of iters
    steps each, inference rounds then training rounds, so that a slow stretch of the host or GPU lands on both models;
    img/s is the median over the rounds."""
    benches = [Bench(name, res, device, batches, compile_mode, ours_kwargs) for name in names]
    for kind in ('infer', 'train'):
        seconds = [[] for _ in benches]
        for _ in range(TIMINGS):
            for bench, times in zip(benches, seconds):
                times.append(bench.seconds(kind, iters))
        for bench, times in zip(benches, seconds):
            bench.row[f'{kind}_img_s'] = bench.row[f'{kind}_batch'] / statistics.median(times)
    return [bench.row for bench in benches]


def compiled_as(mode):
    """The table's words for how the models ran: mode None (eager) or one of COMPILE_MODES."""
    if mode is None:
        return 'eager (no torch.compile)'
    return 'torch.compile' if mode == 'default' else f"torch.compile(mode='{mode}')"


def cell(x, unit=''):
    """x with 2 decimals, '-' for nan (not measured)."""
    return '-' if math.isnan(x) else f'{x:.2f}{unit}'


def write_markdown(result, path):
    rows = {(r['model'], r['res']): r for r in result['rows']}
    lines = [f"# MetaLA-ViT vs DeiT: throughput and memory ({result['date']})", '',
             f"{result['device']}; torch {result['torch']}, triton {result['triton']}, timm {result['timm']}; "
             f"bf16 autocast; {compiled_as(result.get('compiled'))} for both; "
             + (f"ours built with {', '.join(f'{k}={v!r}' for k, v in result['ours_kwargs'].items())}; "
                if result.get('ours_kwargs') else '')
             + 'cudnn.benchmark on; fused AdamW for training. '
             f'The two models of a pair take turns, {TIMINGS} rounds of --iters steps each after {WARMUP_STEPS} '
             'warm-up steps; img/s is the median round. Peak memory of one step above what was allocated before the '
             'model was created (- where not measured: on the CPU and under CUDA graphs). '
             'Ratio = ours / DeiT (higher img/s and lower memory are better).', '',
             '| size | params (M) ours / DeiT | GFLOPs@224 ours / DeiT |', '|---|---|---|']
    for size, (ours, peer) in PAIRS.items():
        if ours in result['params']:
            lines.append(f"| {size.upper()} | {result['params'][ours]:.1f} / {result['params'][peer]:.1f} | "
                         f"{result['gflops'][ours]:.2f} / {result['gflops'][peer]:.2f} |")
    lines += ['', '| pair | res | infer batch | infer img/s ours / DeiT (ratio) | infer GiB ours / DeiT | '
              'train batch | train img/s ours / DeiT (ratio) | train GiB ours / DeiT (ratio) |',
              '|---|---|---|---|---|---|---|---|']
    for size, (ours, peer) in PAIRS.items():
        for res in result['resolutions']:
            if (ours, res) not in rows or (peer, res) not in rows:
                continue
            a, d = rows[ours, res], rows[peer, res]
            lines.append(
                f"| {size.upper()} | {res} | {a['infer_batch']} | {a['infer_img_s']:,.0f} / {d['infer_img_s']:,.0f} "
                f"({a['infer_img_s'] / d['infer_img_s']:.2f}x) | {cell(a['infer_gib'])} / {cell(d['infer_gib'])} | "
                f"{a['train_batch']} | {a['train_img_s']:,.0f} / {d['train_img_s']:,.0f} "
                f"({a['train_img_s'] / d['train_img_s']:.2f}x) | {cell(a['train_gib'])} / {cell(d['train_gib'])} "
                f"({cell(a['train_gib'] / d['train_gib'], 'x')}) |")
    Path(path).write_text('\n'.join(lines) + '\n')


def plot(result, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = [('infer_img_s', 'inference img/s (bf16)'), ('train_img_s', 'training img/s (bf16, AdamW)'),
            ('train_gib', 'training peak memory (GiB)')]
    for ax, (key, title) in zip(axes, keys):
        for size, (ours, peer) in PAIRS.items():
            for name, style in ((ours, '-o'), (peer, '--s')):
                pts = sorted((r['res'], r[key]) for r in result['rows']
                             if r['model'] == name)
                if pts:
                    ax.plot(*zip(*pts), style, label=name)
        ax.set(title=title, xlabel='image side (px)', yscale='log', xticks=result['resolutions'])
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MetaLA-ViT vs DeiT on {result['device']} ({result['date']}); batches shrink with resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--res', type=int, nargs='+', default=[224, 512, 1024])
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--batch', type=int, nargs=2, default=[INFER_BATCH, TRAIN_BATCH], metavar=('INFER', 'TRAIN'),
                        help='batches at 224 px (default: %(default)s); they shrink with the token count above')
    parser.add_argument('--compile', nargs='?', const='default', choices=COMPILE_MODES, default=None, metavar='MODE',
                        help="torch.compile both models of each pair, in a mode of %(choices)s ('reduce-overhead': "
                             'CUDA graphs, no host time between kernels)')
    parser.add_argument('--ours-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help="create_model arguments for our models only, e.g. self_aug=False")
    parser.add_argument('--out', default='benchmarks/models.md', help='the table; .json and .png beside it')
    parser.add_argument('--plot-only', action='store_true', help='redraw models.png from models.json')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'],
                        help='cpu: run the script on the CPU (a check of it; the numbers mean nothing)')
    args = parser.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads(out.with_suffix('.json').read_text()), out.with_suffix('.png'))
        return
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('bench_models.py times CUDA execution: no GPU here (--device cpu checks the script)')
    import triton
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [n for s in args.pairs for n in PAIRS[s]]
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    result = dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                  timm=timm.__version__, python=platform.python_version(), date=str(datetime.date.today()),
                  resolutions=args.res, compiled=args.compile, ours_kwargs=args.ours_kwargs, rows=[],
                  params={n: sum(p.numel() for p in create(n, 224).parameters()) / 1e6 for n in names},
                  gflops={n: gflops_at_224(n) for n in names})
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: the fastest algorithm of each convolution
    for size in args.pairs:
        for res in args.res:
            rows = measure_pair(PAIRS[size], res, args.iters, args.device, args.batch, args.compile,
                                args.ours_kwargs)
            if args.device == 'cuda':
                torch.cuda.empty_cache()  # the models and their optimizers went with measure_pair()
            result['rows'] += rows
            print('\n'.join(json.dumps(row) for row in rows), flush=True)
            out.with_suffix('.json').write_text(json.dumps(result, indent=1))
            write_markdown(result, out)
    print(out.read_text())


if __name__ == '__main__':
    main()
