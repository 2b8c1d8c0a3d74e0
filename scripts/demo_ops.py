"""MetaLA attention on a ViT-S-sized input: checks it against the float64 recurrence and times it.

Runs wherever torch runs: the Triton kernels on CUDA, the chunked PyTorch path on the CPU (or the Triton
kernels interpreted, with TRITON_INTERPRET=1 and --backend triton).

    python scripts/demo_ops.py [--batch 8] [--tokens 197] [--heads 6] [--causal] [--backend auto]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from metala_kernels import metala_attn, naive_recurrent_metala


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--tokens', type=int, default=197)
    parser.add_argument('--heads', type=int, default=6)
    parser.add_argument('--k-dim', type=int, default=32)
    parser.add_argument('--v-dim', type=int, default=64)
    parser.add_argument('--causal', action='store_true')
    parser.add_argument('--backend', default='auto', choices=['auto', 'triton', 'torch'])
    args = parser.parse_args()
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    B, T, H, K, V = args.batch, args.tokens, args.heads, args.k_dim, args.v_dim
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, K, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / 16  # MetaLA's gate: log alpha = logsigmoid(a) / 16
    v = torch.randn(B, T, H, V, generator=gen)
    leaves = [x.to(device, copy=True).requires_grad_() for x in (q, g, v)]
    start = time.perf_counter()
    o = metala_attn(*leaves, causal=args.causal, backend=args.backend)
    o.square().mean().backward()
    if device == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    ref_leaves = [x.to(torch.float64, copy=True).requires_grad_() for x in (q, g, v)]
    ref = naive_recurrent_metala(*ref_leaves, causal=args.causal)
    ref.square().mean().backward()
    errors = {name: ((a.cpu().double() - b).norm() / b.norm()).item()
              for name, a, b in zip(['o', 'dq', 'dg', 'dv'], [o] + [x.grad for x in leaves],
                                    [ref] + [x.grad for x in ref_leaves])}
    mode = 'causal' if args.causal else 'bidirectional'
    print(f'MetaLA attention, {mode}, q/g [{B}, {T}, {H}, {K}], v [{B}, {T}, {H}, {V}] on {device} '
          f'(backend {args.backend}): forward + backward {elapsed * 1e3:.1f} ms')
    print('relative error against the float64 recurrence: ' + ', '.join(f'{n} {e:.1e}' for n, e in errors.items()))
    if max(errors.values()) > 1e-4:
        raise SystemExit('error above 1e-4: the operator disagrees with its reference')


if __name__ == '__main__':
    main()
