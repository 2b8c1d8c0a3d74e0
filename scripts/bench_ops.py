"""Times MetaLA attention against its peers on one GPU, side by side, and writes benchmarks/ops.md.

Peers at the same B, T, H: SDPA (FlashAttention backend, head dim 64), fla's two-pass bidirectional GLA
(chunk_gla + chunk_gla on the flipped sequence, k = 1 - alpha given), and fla's chunk_gla for the causal
mode.  Medians of triton.testing.do_bench (do_bench_cudagraph with --graphs).  The bytes floor is q, g, v read
once and o written once over the measured device-to-device copy bandwidth.

    python scripts/bench_ops.py [--dtype bf16] [--gates fp32] [--out benchmarks/ops.md] [--shapes B:T:H ...]
                                [--widths K:V ...] [--no-fla] [--graphs]

q and v are in --dtype; the gates g = log(alpha) in fp32 by default, as the MetaLA layers give them (their
logsigmoid runs in fp32), or (--gates input) in --dtype too.

The calls are timed as a program calls them, host included (do_bench): at T 197 our forward and backward kernels
take 0.1-0.8 ms, about what Python spends launching them, so the whole-op times there move with the host.  --graphs
replays every timed call (ours and the peers') from a CUDA graph (do_bench_cudagraph): the GPU's time alone, which
is what a model trained under CUDA graphs, or at a batch that keeps the GPU ahead of the host, sees.

Each (K, V) row first compiles and autotunes our kernels and fla's (minutes: on an H200 the first row took more
than 4 minutes, and in session 19 one row with fla, B 256 T 197, had not finished in 4.5): on a time budget, split
the rows over GPUs or processes with --shapes / --widths, or leave fla's columns out (--no-fla).  Each measurement
prints a line on stderr as it ends, with the seconds it took.
"""
import argparse
import datetime
import math
import platform
import sys
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from metala_kernels import metala_attn

SHAPES = [(256, 197, 6), (64, 1024, 6), (8, 4096, 6), (2, 16384, 6)]
WIDTHS = [(32, 64), (64, 64)]  # (K, V): ViT-S MetaLA heads, and K = V = 64


def bench(fn, grad_of=(), graphs=False):
    if graphs:  # its first call, outside the graph, autotunes
        return triton.testing.do_bench_cudagraph(fn, rep=100, grad_to_none=list(grad_of), return_mode='median')
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=list(grad_of), return_mode='median')


def copy_bandwidth():
    """Bytes read + written per second of a 1 GiB device-to-device copy."""
    src = torch.empty(2 ** 28, device='cuda')
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (bench(lambda: dst.copy_(src)) * 1e-3)


def fwd_and_train(fn, inputs, graphs=False, name=None):
    """(fwd ms, fwd+bwd ms) of fn(*inputs) -> tensor, with a fixed random output gradient (graphs: see bench).  With
    a name, a line on stderr says what was measured and how long it took, autotuning included, so a run cut short by
    a time limit still tells where its time went."""
    start = time.perf_counter()
    with torch.no_grad():
        do = torch.randn_like(fn(*inputs))
    leaves = [x for x in inputs if x.requires_grad]
    with torch.no_grad():
        fwd = bench(lambda: fn(*inputs), graphs=graphs)
    train = bench(lambda: fn(*inputs).backward(do), leaves, graphs)
    if name:
        print(f'{name}: fwd {fwd:.3f} ms, fwd+bwd {train:.3f} ms ({time.perf_counter() - start:.0f} s to measure)',
              file=sys.stderr, flush=True)
    return fwd, train


def check_against_torch_path(q, g, v, causal):
    """Largest ||x - ref|| / ||ref|| over o, dq, dg, dv: the timed (autotuned) kernels against the
    PyTorch path in fp32 on the same inputs.  A timing of wrong results is worthless."""
    do = torch.randn_like(v)
    results = []
    for backend, dtype in (('triton', None), ('torch', torch.float32)):  # None: each input in its own dtype
        xs = [x.detach().to(dtype or x.dtype, copy=True).requires_grad_() for x in (q, g, v)]
        metala_attn(*xs, causal=causal, backend=backend).backward(do.to(dtype or v.dtype))
        results.append([metala_attn(*xs, causal=causal, backend=backend).detach()] + [x.grad for x in xs])
    return max(((a.float() - b).norm() / b.norm()).item() for a, b in zip(*results))


def metala_inputs(B, T, H, K, V, dtype, gate_dtype):
    """q [B, T, H, K], g [B, T, H, K] (gate_dtype), v [B, T, H, V]: random, g = logsigmoid(randn) / 16."""
    q = torch.randn(B, T, H, K, device='cuda', dtype=dtype, requires_grad=True)
    g = (F.logsigmoid(torch.randn(B, T, H, K, device='cuda')) / 16).to(gate_dtype).requires_grad_()
    v = torch.randn(B, T, H, V, device='cuda', dtype=dtype, requires_grad=True)
    return q, g, v


def fla_bidirectional(q, k, v, g):
    from fla.ops.gla import chunk_gla
    fwd, _ = chunk_gla(q, k, v, g)
    bwd, _ = chunk_gla(q.flip(1), k.flip(1), v.flip(1), g.flip(1))
    return fwd + bwd.flip(1)  # the diagonal twice: a cost-equal stand-in, timed not compared


def fla_causal(q, k, v, g):
    from fla.ops.gla import chunk_gla
    return chunk_gla(q, k, v, g)[0]


def sdpa(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def run(shapes, widths, dtype, gate_dtype, bandwidth, out_path, head, with_fla=True, graphs=False):
    """Times every (B, T, H) of shapes at every (K, V) of widths (graphs: see bench); the file at out_path gets each
    row as it is measured.  Without with_fla, fla's columns are nan (printed as -)."""
    rows = []
    for B, T, H in shapes:
        qs = [torch.randn(B, H, T, 64, device='cuda', dtype=dtype, requires_grad=True) for _ in range(3)]
        sdpa_fwd, sdpa_train = fwd_and_train(sdpa, qs, graphs, f'B {B} T {T} H {H}, SDPA')
        del qs
        for K, V in widths:
            shape = f'B {B} T {T} H {H} K {K} V {V}'
            q, g, v = metala_inputs(B, T, H, K, V, dtype, gate_dtype)
            # as the layers call it: their g = logsigmoid(.) / 16 <= 0 needs no check (a host sync by default)
            ours = fwd_and_train(lambda q, g, v: metala_attn(q, g, v, check_gates=False), (q, g, v), graphs,
                                 f'{shape}, ours')
            ours_causal = fwd_and_train(lambda q, g, v: metala_attn(q, g, v, causal=True, check_gates=False),
                                        (q, g, v), graphs, f'{shape}, ours causal')
            k = (1 - g.float().exp()).to(dtype).detach().requires_grad_()
            g32 = g.float().detach().requires_grad_()
            fla_bi = fla_c = (float('nan'), float('nan'))
            if with_fla:
                try:
                    fla_bi = fwd_and_train(fla_bidirectional, (q, k, v, g32), graphs, f'{shape}, fla 2-pass')
                    fla_c = fwd_and_train(fla_causal, (q, k, v, g32), graphs, f'{shape}, fla chunk_gla')
                except ImportError:
                    pass
            err = max(check_against_torch_path(q, g, v, False), check_against_torch_path(q, g, v, True))
            floor_ms = sum(x.numel() * x.element_size() for x in (q, g, v, v)) / bandwidth * 1e3  # o as v
            rows.append(dict(B=B, T=T, H=H, K=K, V=V, err=err, floor=floor_ms, ours=ours, sdpa=(sdpa_fwd, sdpa_train),
                             fla_bi=fla_bi, causal=ours_causal, fla_causal=fla_c))
            print(table([rows[-1]], header=not rows[:-1]), flush=True)
            with open(out_path, 'w') as f:
                f.write(head + table(rows) + '\n')
            del q, g, v, k, g32
    return rows


def table(rows, header=True):
    lines = []
    if header:
        lines += ['| B | T | H | K | V | max rel err | floor ms | ours fwd | SDPA fwd | fla 2-pass fwd | ours fwd+bwd '
                  '| SDPA fwd+bwd | fla 2-pass fwd+bwd | ours/SDPA fwd | ours/SDPA fwd+bwd | fla/ours fwd+bwd '
                  '| causal fwd+bwd | fla chunk_gla fwd+bwd | ours/fla causal |',
                  '|' + '---|' * 19]
    for r in rows:
        (of, ot), (sf, st), (ff, ft) = r['ours'], r['sdpa'], r['fla_bi']
        (_, ct), (_, gt) = r['causal'], r['fla_causal']
        cells = [(r['err'], '.1e'), (r['floor'], '.3f'), (of, '.3f'), (sf, '.3f'), (ff, '.3f'), (ot, '.3f'),
                 (st, '.3f'), (ft, '.3f'), (of / sf, '.2f'), (ot / st, '.2f'), (ft / ot, '.1f'), (ct, '.3f'),
                 (gt, '.3f'), (ct / gt, '.2f')]
        lines.append(f"| {r['B']} | {r['T']} | {r['H']} | {r['K']} | {r['V']} | "
                     + ' | '.join('-' if math.isnan(x) else format(x, spec) for x, spec in cells) + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'])
    parser.add_argument('--gates', default='fp32', choices=['fp32', 'input'],
                        help="g's dtype: fp32 (as the layers give it) or input (--dtype)")
    parser.add_argument('--out', default='benchmarks/ops.md')
    parser.add_argument('--shapes', nargs='+', metavar='B:T:H', type=lambda s: tuple(map(int, s.split(':'))),
                        default=SHAPES, help='batch:length:heads to time (default: %(default)s)')
    parser.add_argument('--widths', nargs='+', metavar='K:V', type=lambda s: tuple(map(int, s.split(':'))),
                        default=WIDTHS, help='head widths to time at each shape (default: %(default)s)')
    parser.add_argument('--no-fla', action='store_true', help="leave out fla's columns (they autotune for minutes)")
    parser.add_argument('--graphs', action='store_true', help='time every call replayed from a CUDA graph (GPU time)')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('bench_ops.py times GPU kernels: no CUDA device is visible')
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[args.dtype]
    gate_dtype = torch.float32 if args.gates == 'fp32' else dtype
    bandwidth = copy_bandwidth()
    try:
        import fla
        fla_version = 'not timed' if args.no_fla else fla.__version__
    except ImportError:
        fla_version = 'not installed'
    head = (f'# MetaLA attention vs peers ({args.dtype}, gates {args.dtype if args.gates == "input" else "fp32"})\n\n'
            f'- device: {torch.cuda.get_device_name()}; measured copy bandwidth {bandwidth / 1e12:.2f} TB/s\n'
            f'- torch {torch.__version__}, triton {triton.__version__}, fla {fla_version}, '
            f'python {platform.python_version()}; date {datetime.date.today()}\n'
            f'- times are medians in ms ('
            + ('triton.testing.do_bench_cudagraph: every call replayed from a CUDA graph, the GPU\'s time without '
               'the host\'s' if args.graphs else 'triton.testing.do_bench: host included') +
            f'); SDPA is FlashAttention at head dim 64 and '
            f'the same B, T, H; fla 2-pass = chunk_gla + chunk_gla on the flipped sequence; '
            f'floor = q, g, v read once + o written once at the copy bandwidth (g in its dtype); max rel err = o, '
            f'dq, dg, dv of '
            f'the timed kernels (both modes) against the PyTorch path in fp32; ours = metala_attn(q, g, v, '
            f'check_gates=False), as the layers call it (the default check of g <= 0 syncs with the host)\n\n')
    rows = run(args.shapes, args.widths, dtype, gate_dtype, bandwidth, args.out, head, with_fla=not args.no_fla,
               graphs=args.graphs)
    print(head + table(rows))


if __name__ == '__main__':
    main()
