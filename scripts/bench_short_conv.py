"""Times the image mixer's short convolution (depthwise 3 x 3 + SiLU, metala_kernels.short_conv2d) on one GPU: its
Triton kernels against its PyTorch path (cuDNN's depthwise convolution on the channels-last view, then SiLU), side
by side, forward and forward + backward, bf16, at the token grids of the MetaLA-ViT models.

    python scripts/bench_short_conv.py [--cases B:GH:GW:C ...] [--configs 32:32:4 64:64:8] [--graphs] [--out FILE]

cuDNN runs with torch.backends.cudnn.benchmark off (its heuristics: how the models run it) and on (the fastest of
its algorithms for the shape).  --configs times the kernels at each of these launches, tokens:channels:warps a
program (metala_kernels.dwconv.LAUNCH).  --graphs replays every call from a CUDA graph (the GPU's time alone).  Each
row gives the forward's bytes (x read, y written) over its time, and each kernel row its largest error (y, dx, dw)
against the PyTorch path in fp32.  --device cpu runs fp32 under Triton's interpreter: a check of the script, not a
timing.
"""
import argparse
import os

from ab_kernels import milliseconds

CASES = ['256:14:14:384', '128:14:14:384', '128:14:14:192', '64:14:14:768', '12:64:64:384']


def time_case(case, configs, device, graphs):
    """[(implementation, fwd ms, fwd+bwd ms, error or None)] for case B:GH:GW:C."""
    import torch
    from metala_kernels import dwconv, short_conv2d
    B, gh, gw, C = map(int, case.split(':'))
    dtype = torch.bfloat16 if device == 'cuda' else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(B, gh * gw, C, device=device, dtype=dtype, generator=gen).requires_grad_()
    w = torch.empty_strided((C, 1, 3, 3), (9, 1, 3, 1), device=device)  # a ShortConv's parameter
    w.copy_(torch.randn(C, 1, 3, 3, device=device, generator=gen) / 3).requires_grad_()
    dy = torch.randn(B, gh * gw, C, device=device, dtype=dtype, generator=gen)

    def timed(backend):
        fwd = lambda: short_conv2d(x, w, (gh, gw), backend=backend)  # noqa: E731
        with torch.no_grad():
            forward = milliseconds(fwd, device, graphs)
        return forward, milliseconds(lambda: fwd().backward(dy), device, graphs, grads=(x, w))

    rows = []
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        rows.append((f"PyTorch (cuDNN{', benchmark' if benchmark else ''})", *timed('torch'), None))
    torch.backends.cudnn.benchmark = False
    for config in configs:
        dwconv.LAUNCH = dict(zip(('tokens', 'channels', 'warps'), map(int, config.split(':'))))
        rows.append((f'Triton, {config}', *timed('triton'), max_error(x, w, dy, (gh, gw))))
    return rows


def max_error(x, w, dy, grid_size):
    """The largest ||a - ref|| / ||ref|| of the kernels' y, dx, dw against the PyTorch path in fp32."""
    from metala_kernels import short_conv2d
    results = []
    for backend, fp32 in (('triton', False), ('torch', True)):
        xs = (x.detach().float() if fp32 else x.detach().clone()).requires_grad_()
        ws = w.detach().clone().requires_grad_()
        y = short_conv2d(xs, ws, grid_size, backend=backend)
        y.backward(dy.to(y.dtype))
        results.append((y.detach(), xs.grad, ws.grad))
    return max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*results))


def table(results, bytes_per_value):
    """Markdown: one row per (case, implementation), ratios to the first implementation of the case."""
    lines = ['| B | grid | C | implementation | fwd ms | fwd+bwd ms | fwd GB/s | vs first: fwd, fwd+bwd '
             '| max rel err |',
             '|---|---|---|---|---|---|---|---|---|']
    for case, rows in results.items():
        B, gh, gw, C = map(int, case.split(':'))
        moved = 2 * B * gh * gw * C * bytes_per_value
        (_, first_fwd, first_train, _) = rows[0]
        for name, fwd, train, err in rows:
            lines.append(f'| {B} | {gh}x{gw} | {C} | {name} | {fwd:.4f} | {train:.4f} | {moved / fwd / 1e6:.0f} | '
                         f'{fwd / first_fwd:.2f}, {train / first_train:.2f} | '
                         + ('-' if err is None else f'{err:.1e}') + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', nargs='+', default=CASES, metavar='B:GH:GW:C')
    parser.add_argument('--configs', nargs='+', default=None, metavar='TOKENS:CHANNELS:WARPS',
                        help="the kernels' launches to time (default: metala_kernels.dwconv.LAUNCH's)")
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--graphs', action='store_true', help='replay the calls from CUDA graphs (GPU time alone)')
    parser.add_argument('--out', help='also write the table here')
    args = parser.parse_args()
    for case in args.cases:
        if len(case.split(':')) != 4 or not all(p.isdigit() for p in case.split(':')):
            parser.error(f'--cases: {case!r} is not B:GH:GW:C')
    for config in args.configs or []:
        if len(config.split(':')) != 3 or not all(p.isdigit() for p in config.split(':')):
            parser.error(f'--configs: {config!r} is not TOKENS:CHANNELS:WARPS')
    if args.graphs and args.device != 'cuda':
        parser.error('--graphs needs --device cuda')
    if args.device == 'cpu':
        os.environ['TRITON_INTERPRET'] = '1'  # before triton is imported
    import torch
    import triton
    from metala_kernels import dwconv
    configs = args.configs or [':'.join(str(dwconv.LAUNCH[k]) for k in ('tokens', 'channels', 'warps'))]
    results = {}
    for case in args.cases:
        results[case] = time_case(case, configs, args.device, args.graphs)
        print(table({case: results[case]}, 2 if args.device == 'cuda' else 4), flush=True)
    device = torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU (interpreter: not a timing)'
    text = (f'{device}; torch {torch.__version__}, triton {triton.__version__}; '
            f"{'CUDA graphs' if args.graphs else 'host launches included'}\n\n"
            + table(results, 2 if args.device == 'cuda' else 4) + '\n')
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
