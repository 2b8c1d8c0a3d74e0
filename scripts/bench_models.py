"""Throughput and peak memory of metala_vit_t/s/b against timm's DeiT, side by side on one GPU.

Inference: bf16 autocast, batch 256 at 224 px; training step: bf16 autocast, fwd + bwd + fused AdamW, batch 128 at
224 px; batches shrink with the token count at 512 and 1024 px (the same batch for both models of a pair).
Images/s over timed iterations after warm-up (CUDA events); peak memory of the timed step; parameters; GFLOPs of one
224 px image counted by torch.utils.flop_counter on the CPU (our operator counted through its PyTorch path).
Writes benchmarks/models.md and models.json beside it; --plot-only redraws models.png from the JSON (matplotlib).

    python scripts/bench_models.py [--res 224 512 1024] [--pairs t s b] [--out benchmarks/models.md]
"""
import argparse
import datetime
import json
import platform
import statistics
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import metala_vision  # noqa: F401  (registers the metala_vit models)

PAIRS = {'t': ('metala_vit_t', 'deit_tiny_patch16_224'), 's': ('metala_vit_s', 'deit_small_patch16_224'),
         'b': ('metala_vit_b', 'deit_base_patch16_224')}
INFER_BATCH, TRAIN_BATCH = 256, 128
WARMUP_STEPS, TIMINGS = 10, 5  # each img/s: the median of TIMINGS timings of --iters steps, after the warm-up


def batch_at(base, res):
    """Batch at res px: base at 224, scaled down by the token count (at least 4)."""
    return max(4, int(base * (224 / res) ** 2) // 2 * 2)


def create(name, res):
    kwargs = dict(img_size=res) if name.startswith('deit') else {}
    return timm.create_model(name, num_classes=1000, **kwargs)


def gflops_at_224(name):
    model = create(name, 224).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def timed(step, iters, warmup=WARMUP_STEPS, repeats=TIMINGS):
    """(seconds per step, peak bytes) of step() on the GPU: the median of `repeats` timings of `iters` steps each,
    so that a transient (clocks, the allocator, another process) moves one timing, not the result."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        torch.cuda.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(seconds), torch.cuda.max_memory_allocated()


def measure(name, res, iters, compile_model=False):
    """Inference and training images/s and peak GiB of one model at res px (torch.compile'd if asked)."""
    model = create(name, res).cuda()
    if compile_model:
        model = torch.compile(model)
    row = {'model': name, 'res': res, 'compiled': compile_model}
    b = batch_at(INFER_BATCH, res)
    x = torch.randn(b, 3, res, res, device='cuda')
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            model(x)

    sec, peak = timed(infer, iters)
    row.update(infer_batch=b, infer_img_s=b / sec, infer_gib=peak / 2 ** 30)

    b = batch_at(TRAIN_BATCH, res)
    x = torch.randn(b, 3, res, res, device='cuda')
    y = torch.randint(0, 1000, (b,), device='cuda')
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def train():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec, peak = timed(train, iters)
    row.update(train_batch=b, train_img_s=b / sec, train_gib=peak / 2 ** 30)
    return row


def write_markdown(result, path):
    rows = {(r['model'], r['res']): r for r in result['rows']}
    lines = [f"# MetaLA-ViT vs DeiT: throughput and memory ({result['date']})", '',
             f"{result['device']}; torch {result['torch']}, triton {result['triton']}, timm {result['timm']}; "
             f"bf16 autocast; {'torch.compile' if result.get('compiled') else 'eager (no torch.compile)'} for both; "
             'fused AdamW for training. '
             f'img/s: the median of {TIMINGS} timings of --iters steps each, after {WARMUP_STEPS} warm-up steps; '
             'peak memory of the timed steps. '
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
                f"({a['infer_img_s'] / d['infer_img_s']:.2f}x) | {a['infer_gib']:.2f} / {d['infer_gib']:.2f} | "
                f"{a['train_batch']} | {a['train_img_s']:,.0f} / {d['train_img_s']:,.0f} "
                f"({a['train_img_s'] / d['train_img_s']:.2f}x) | {a['train_gib']:.2f} / {d['train_gib']:.2f} "
                f"({a['train_gib'] / d['train_gib']:.2f}x) |")
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
    parser.add_argument('--compile', action='store_true', help='torch.compile both models of each pair')
    parser.add_argument('--out', default='benchmarks/models.md', help='the table; .json and .png beside it')
    parser.add_argument('--plot-only', action='store_true', help='redraw models.png from models.json')
    args = parser.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads(out.with_suffix('.json').read_text()), out.with_suffix('.png'))
        return
    if not torch.cuda.is_available():
        raise SystemExit('bench_models.py times CUDA execution: no GPU here')
    import triton
    names = [n for s in args.pairs for n in PAIRS[s]]
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  timm=timm.__version__, python=platform.python_version(), date=str(datetime.date.today()),
                  resolutions=args.res, compiled=args.compile, rows=[],
                  params={n: sum(p.numel() for p in create(n, 224).parameters()) / 1e6 for n in names},
                  gflops={n: gflops_at_224(n) for n in names})
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    for size in args.pairs:
        for res in args.res:
            for name in PAIRS[size]:
                row = measure(name, res, args.iters, args.compile)
                torch.cuda.empty_cache()  # the model and its optimizer went with measure()
                result['rows'].append(row)
                print(json.dumps(row), flush=True)
                out.with_suffix('.json').write_text(json.dumps(result, indent=1))
                write_markdown(result, out)
    print(out.read_text())


if __name__ == '__main__':
    main()
