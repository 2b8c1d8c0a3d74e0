"""Times the two ways of step 1 (the states entering every chunk) side by side on one GPU: carried (one program per
(batch, head) through all chunks) and split (every chunk's own term in parallel, then the combine kernel), both
forced, at K 32 / V 64 in bf16 (g in fp32). Prints a markdown table: bidirectional fwd and fwd+bwd, causal fwd+bwd
(ms, triton.testing.do_bench medians), and the largest |difference| of the two outputs. The rule in
metala_kernels/chunk.py (COMBINE_MIN_CHUNKS, CARRY_PROGRAMS_PER_SM) comes from this table (benchmarks/ops.md).

    python scripts/bench_state_scan.py [B:T:H ...]
"""
import argparse

import torch
import torch.nn.functional as F
import triton

from bench_ops import fwd_and_train  # scripts/ is on the path when this script runs
from metala_kernels import chunk, metala_attn

SHAPES = ['256:197:6', '64:1024:6', '12:4096:6', '4:4096:6', '2:16384:6']
FORCE = {'carried': dict(CARRY_PROGRAMS_PER_SM=0), 'split': dict(CARRY_PROGRAMS_PER_SM=10 ** 9, COMBINE_MIN_CHUNKS=1)}


def times(q, g, v, causal):
    """(fwd ms, fwd+bwd ms, o) with the step-1 rule as chunk's module constants now say."""
    fn = lambda q, g, v: metala_attn(q, g, v, causal=causal, check_gates=False)  # noqa: E731
    with torch.no_grad():
        o = fn(q, g, v).float()
    return (*fwd_and_train(fn, (q, g, v)), o)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('shapes', nargs='*', default=SHAPES, metavar='B:T:H')
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rule = {name: getattr(chunk, name) for name in ('CARRY_PROGRAMS_PER_SM', 'COMBINE_MIN_CHUNKS')}
    print(f'{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}')
    print('| B | T | H | programs/SM | carried fwd | split fwd | carried fwd+bwd | split fwd+bwd | '
          'carried causal fwd+bwd | split causal fwd+bwd | max diff |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for shape in args.shapes:
        B, T, H = map(int, shape.split(':'))
        K, V = 32, 64
        q = torch.randn(B, T, H, K, device='cuda', dtype=torch.bfloat16, requires_grad=True)
        g = (F.logsigmoid(torch.randn(B, T, H, K, device='cuda')) / 16).requires_grad_()
        v = torch.randn(B, T, H, V, device='cuda', dtype=torch.bfloat16, requires_grad=True)
        row = {}
        for way, constants in FORCE.items():
            for name, value in {**rule, **constants}.items():
                setattr(chunk, name, value)
            row[way, False] = times(q, g, v, causal=False)
            row[way, True] = times(q, g, v, causal=True)
        for name, value in rule.items():
            setattr(chunk, name, value)
        diff = (row['carried', False][2] - row['split', False][2]).abs().max().item()
        cells = [row['carried', False][0], row['split', False][0], row['carried', False][1], row['split', False][1],
                 row['carried', True][1], row['split', True][1]]
        print(f'| {B} | {T} | {H} | {B * H / sms:.1f} | ' + ' | '.join(f'{t:.3f}' for t in cells) + f' | {diff:.1e} |',
              flush=True)


if __name__ == '__main__':
    main()
