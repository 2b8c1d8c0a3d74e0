"""Times versions of the chunked kernels side by side on one GPU: `_chunk_fwd` and `_chunk_bwd` of
metala_kernels/chunk.py (every launch of a forward, of a backward), each version in its own process, the processes
alternated --rounds times so that slow stretches of the host and the GPU land on every version (each process's times
go to stderr as it ends, so a run cut short keeps them). A version is a git revision (its kernels/ folder, exported)
or a folder holding the kernels. Prints a markdown table of the medians over the rounds with the ratios to the first
version, then every round's times (their spread is the noise).

    python scripts/ab_kernels.py 51b0ce7 kernels [--rounds 2] [--cases 128:197:bidir:1 ...] [--check] [--out FILE]

A case B:T:MODE:GATES[:GDTYPE] is the batch, the tokens, bidir or causal, a factor on MetaLA's gates
logsigmoid(randn) / 16 (200: every chunk decays past e^-30, the per-key path), and the gates' dtype: fp32 (the
default, as the mixer gives them) or bf16 (as q and v); H 6, K 32, V 64 (ViT-S heads), bf16 on CUDA.  The
kernels autotune in each process as they do in training.  --device cpu runs the same in fp32 under Triton's
interpreter: a check of the script, not a timing.  --graphs times each call replayed from a CUDA graph
(`triton.testing.do_bench_cudagraph`, after a first call that autotunes): the GPU's time alone, without the host's
launches, which bound these kernels at batch 128 and below.  --check also gives each version's error against the
PyTorch path in fp32 (o and the gradients of q, g, v), computed after its timing, with the configs it tuned: a
version whose speed comes with wrong outputs (a launch config that breaks them) shows it in the same table.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ['128:197:bidir:1', '256:197:bidir:1', '64:1024:bidir:1', '2:16384:bidir:1', '32:197:bidir:1',
         '128:197:causal:1', '128:197:bidir:200']
H, K, V = 6, 32, 64
GATE_DTYPES = {'fp32': 'float32', 'bf16': 'bfloat16'}  # torch dtype names (torch is imported by the workers only)


def export(version, into):
    """The kernels of version (a folder, or a git revision of this repository) as the package into/metala_kernels."""
    into.mkdir()
    target = into / 'metala_kernels'
    if Path(version).is_dir():
        shutil.copytree(version, target, ignore=shutil.ignore_patterns('__pycache__'))
    else:
        archive = subprocess.run(['git', '-C', str(REPO), 'archive', version, 'kernels'], capture_output=True,
                                 check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(into)], input=archive, check=True)
        (into / 'kernels').rename(target)
    if not (target / 'chunk.py').is_file():
        raise SystemExit(f'{version}: no chunk.py in its kernels')


def time_version(case_names, device, graphs, check):
    """{case: (fwd ms, bwd ms)}, the file of the chunk module timed (the metala_kernels first on sys.path: run in a
    worker process) and, with check, {case: error} (see max_error)."""
    import torch
    import torch.nn.functional as F
    from metala_kernels import chunk
    dtype = torch.bfloat16 if device == 'cuda' else torch.float32
    times, errors = {}, {}
    for name in case_names:
        B, T, mode, gates, *g_dtype = name.split(':')
        B, T, causal = int(B), int(T), mode == 'causal'
        g_dtype = getattr(torch, GATE_DTYPES[g_dtype[0] if g_dtype else 'fp32'])
        gen = torch.Generator(device).manual_seed(0)
        q, v, do = (torch.randn(B, T, H, D, device=device, dtype=dtype, generator=gen) for D in (K, V, V))
        g = (F.logsigmoid(torch.randn(B, T, H, K, device=device, generator=gen)) / 16 * float(gates)).to(g_dtype)
        fwd = lambda: chunk._chunk_fwd(q, g, g, v, K ** -0.5, causal, False)  # noqa: E731
        bwd = lambda: chunk._chunk_bwd(q, g, g, v, do, K ** -0.5, causal, False)  # noqa: E731
        times[name] = (milliseconds(fwd, device, graphs), milliseconds(bwd, device, graphs))
        if check:  # after the timing: with the configs it tuned
            o, (dq, dg, _, dv) = fwd(), bwd()
            errors[name] = max_error(dict(o=o, dq=dq, dg=dg, dv=dv), q, g, v, do, causal)
    return times, chunk.__file__, errors


def max_error(outputs, q, g, v, do, causal):
    """The largest ||x - ref|| / ||ref|| of the kernels' outputs {o, dq, dg, dv} against the PyTorch path in fp32 (the
    version's own chunk_metala_torch, through autograd); NaN if one of them is not finite."""
    import torch
    from metala_kernels import chunk_metala_torch
    q32, g32, v32 = (x.to(torch.float32, copy=True).requires_grad_() for x in (q, g, v))
    o32 = chunk_metala_torch(q32, g32, v32, scale=q.shape[-1] ** -0.5, causal=causal)
    o32.backward(do.float())
    refs = dict(o=o32.detach(), dq=q32.grad, dg=g32.grad, dv=v32.grad)
    if not all(torch.isfinite(x).all() for x in outputs.values()):
        return float('nan')
    return max(((outputs[n].float() - r).norm() / r.norm()).item() for n, r in refs.items())


def milliseconds(fn, device, graphs):
    """Median ms of fn() (graphs: replayed from a CUDA graph; on the CPU three plain calls)."""
    if graphs:
        from triton.testing import do_bench_cudagraph
        fn()  # autotunes outside the graph
        return do_bench_cudagraph(fn, rep=300, return_mode='median')
    if device == 'cuda':
        from triton.testing import do_bench
        return do_bench(fn, warmup=50, rep=300, return_mode='median')
    fn()
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def table(versions, rounds, checks=None):
    """Markdown: per case the median fwd and bwd ms of each version, their ratios to the first version's, the
    rounds, and (checks: {version: {case: error}}) the errors.  rounds: [{version: {case: (fwd, bwd)}}]."""
    cases = list(rounds[0][versions[0]])
    med = {v: {c: [statistics.median(r[v][c][i] for r in rounds) for i in (0, 1)] for c in cases} for v in versions}
    head = ['case'] + [f'{v} {p}' for v in versions for p in ('fwd', 'bwd')] + \
        [f'{v} / {versions[0]} {p}' for v in versions[1:] for p in ('fwd', 'bwd')]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for c in cases:
        cells = [f'{med[v][c][i]:.3f}' for v in versions for i in (0, 1)]
        cells += [f'{med[v][c][i] / med[versions[0]][c][i]:.2f}' for v in versions[1:] for i in (0, 1)]
        lines.append('| ' + ' | '.join([c] + cells) + ' |')
    lines.append('')
    for c in cases:
        lines.append(f'- {c}: ' + '; '.join(
            f"{v} {', '.join(f'{r[v][c][0]:.3f}/{r[v][c][1]:.3f}' for r in rounds)}" for v in versions))
    if checks:
        lines += ['', 'Largest ||x - ref|| / ||ref|| of o, dq, dg, dv against the PyTorch path in fp32 (worst round):']
        lines += [f'- {c}: ' + '; '.join(f'{v} {checks[v][c]:.1e}' for v in versions) for c in cases]
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('versions', nargs='+', help='git revisions or folders of kernels, the first the baseline')
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--cases', nargs='+', default=CASES, metavar='B:T:MODE:GATES[:GDTYPE]')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--graphs', action='store_true', help='replay the calls from CUDA graphs (GPU time alone)')
    parser.add_argument('--check', action='store_true',
                        help="also each version's error against the PyTorch path (fp32), with the configs it tuned")
    parser.add_argument('--out', help='also write the table here')
    parser.add_argument('--worker', help=argparse.SUPPRESS)  # a folder holding metala_kernels: time it, print JSON
    args = parser.parse_args()
    if args.graphs and args.device != 'cuda':
        parser.error('--graphs needs --device cuda')
    if len(set(args.versions)) < len(args.versions):
        parser.error('a version named twice')
    for case in args.cases:
        parts = case.split(':')
        if len(parts) not in (4, 5) or not (parts[0].isdigit() and parts[1].isdigit()) \
                or parts[2] not in ('bidir', 'causal') or parts[4:] and parts[4] not in GATE_DTYPES:
            parser.error(f"--cases: {case!r} is not B:T:bidir|causal:GATES[:{'|'.join(GATE_DTYPES)}]")
    if args.worker:
        sys.path.insert(0, args.worker)
        print(json.dumps(time_version(args.cases, args.device, args.graphs, args.check)))
        return
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if args.device == 'cpu':
        env['TRITON_INTERPRET'] = '1'
    with tempfile.TemporaryDirectory() as tmp:
        folders = {version: Path(tmp) / str(i) for i, version in enumerate(args.versions)}
        for version, folder in folders.items():
            export(version, folder)
        rounds, checks = [], {}
        for _ in range(args.rounds):
            rounds.append({})
            for version, folder in folders.items():
                out = subprocess.run([sys.executable, __file__, *args.versions, '--device', args.device,
                                      *(['--graphs'] if args.graphs else []), *(['--check'] if args.check else []),
                                      '--worker', str(folder), '--cases', *args.cases], env=env, text=True,
                                     stdout=subprocess.PIPE, check=True).stdout
                times, timed_file, errors = json.loads(out.splitlines()[-1])
                if not Path(timed_file).resolve().is_relative_to(folder.resolve()):
                    raise SystemExit(f'{version}: the worker imported {timed_file}, not the copy in {folder}')
                rounds[-1][version] = {c: tuple(t) for c, t in times.items()}
                for case, error in errors.items():  # the worst round's; NaN stays
                    worst = checks.setdefault(version, {}).get(case, 0.)
                    checks[version][case] = error if error != error or error > worst else worst
                print(f'round {len(rounds)} {version}: ' + ', '.join(
                    f'{c} {f:.3f}/{b:.3f}' + (f' (err {errors[c]:.1e})' if c in errors else '')
                    for c, (f, b) in times.items()), file=sys.stderr, flush=True)
    text = table(args.versions, rounds, checks)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == '__main__':
    main()
