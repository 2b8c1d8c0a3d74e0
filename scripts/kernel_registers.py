"""Registers per thread, spilled bytes, shared memory and machine instructions of our Triton kernels, compiled for an
NVIDIA target on any machine (no GPU needed: Triton's own ptxas and nvdisasm).  Proxies while the kernels change on a
CPU machine: for occupancy (a program of 8 warps at 255 registers fills a whole SM's register file) and for the
issue-bound backward (session 12's profile: the SASS instructions of its code, not the count it executes); the times
still come from bench_ops.py and ab_kernels.py.

    python scripts/kernel_registers.py [--arch 90] [--widths K:V ...] [--chunk BT]
"""
import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop('TRITON_INTERPRET', None)  # compile, do not interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from metala_kernels import chunk  # noqa: E402


def pointers(names, states='*bf16'):
    """Pointer types: fp32 gates (as the mixer gives them) and chunk decays, the int32 chunk list of step 2, states
    in bf16 where carried (chunk._states_dtype) or fp32 (chunk terms, combined), the others bf16."""
    return {name: '*fp32' if name in ('g', 'gb', 'dg', 'dgb', 'decays') else '*i32' if name == 'slow'
            else states if name == 'states' else '*bf16' for name in names}


def launches(configs, also=()):
    """The (warps, register cap or None) a kernel's configs launch with, and (also) more warps uncapped."""
    return sorted({(config.num_warps, config.maxnreg) for config in configs} | {(warps, None) for warps in also},
                  key=lambda launch: (launch[0], launch[1] or 0))


STATES = ('q', 'g', 'gb', 'v', 'do', 'states', 'decays', 'slow')
KERNELS = [  # (name, kernel, pointer args and types, constexpr variant, launches); step 2 reads carried states
    ('states (values: S, R), carried', chunk._metala_states_kernel, pointers(STATES),
     dict(BIDIR=True, X_IS_Q=False, DIRS=4, FIRST=0, CARRY=True), launches(chunk.FWD_CONFIGS)),
    ('states (gradients: dS, dR), carried', chunk._metala_states_kernel, pointers(STATES),
     dict(BIDIR=True, X_IS_Q=True, DIRS=4, FIRST=1, CARRY=True), launches(chunk.FWD_CONFIGS)),
    ('states (values), chunk terms', chunk._metala_states_kernel, pointers(STATES, '*fp32'),
     dict(BIDIR=True, X_IS_Q=False, DIRS=4, FIRST=0, CARRY=False), launches(chunk.FWD_CONFIGS)),
    ('states, combine', chunk._metala_combine_kernel, pointers(('states', 'decays'), '*fp32'),
     dict(DIRS=2, REVERSED=2, BLOCK=chunk.COMBINE_BLOCK, CHUNKS=chunk.COMBINE_CHUNKS), launches([], also=(4,))),
] + [  # step 2, both modes: its two launches with the states from step 1, and its one with the states recomputed
    (f"{name}, {'bidirectional' if bidir else 'causal'}, "
     f"{'states recomputed' if recompute else f'{paths} launch'}", kernel, types,
     dict(BIDIR=bidir, SEP_GB=False, RECOMPUTE=recompute, PATHS=paths), kernel_launches)
    for name, kernel, types, kernel_launches in (
        ('output', chunk._metala_out_kernel, pointers(('q', 'g', 'gb', 'v', 'o', 'states', 'slow')),
         launches(chunk.OUT_CONFIGS, also=(8,))),
        ('backward', chunk._metala_bwd_kernel,
         pointers(('q', 'g', 'gb', 'v', 'do', 'dq', 'dg', 'dgb', 'dv', 'states', 'slow')),
         launches(chunk.BWD_CONFIGS)))
    for recompute, paths in ((False, 'fast'), (False, 'slow'), (True, 'both')) for bidir in (True, False)]


def resources(kernel, pointer_types, constexprs, num_warps, arch, maxnreg=None):
    """(registers per thread, spill store bytes, shared memory bytes, SASS instructions) of one compiled variant
    (maxnreg: a cap on its registers, as a config's)."""
    # in the kernel's argument order; the arguments neither pointers nor constexprs are its scalars (T, NT, strides)
    signature = {name: pointer_types.get(name) or ('constexpr' if name in constexprs else
                                                   'fp32' if name == 'scale' else 'i32') for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget('cuda', arch, 32),
                              options=dict(num_warps=num_warps, num_stages=1, maxnreg=maxnreg))
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, 'kernel.ptx')
        with open(ptx, 'w') as f:
            f.write(compiled.asm['ptx'])
        report = subprocess.run([get_ptxas(arch).path, f'-arch=sm_{arch}a', '-v', ptx, '-o', os.devnull],
                                capture_output=True, text=True, check=True).stderr
        cubin = os.path.join(tmp, 'kernel.cubin')
        with open(cubin, 'wb') as f:
            f.write(compiled.asm['cubin'])
        sass = subprocess.run([knobs.nvidia.nvdisasm.path, '-c', cubin], capture_output=True, text=True,
                              check=True).stdout
    registers = int(re.search(r'Used (\d+) registers', report).group(1))
    spills = int(re.search(r'(\d+) bytes spill stores', report).group(1))
    instructions = len(re.findall(r'^\s+/\*[0-9a-f]{4,}\*/', sass, re.MULTILINE))  # one address comment each
    return registers, spills, compiled.metadata.shared, instructions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', type=int, default=90, help='compute capability x 10 (90: H100, H200)')
    parser.add_argument('--widths', nargs='+', default=['32:64', '64:64'], metavar='K:V')
    parser.add_argument('--chunk', type=int, default=None, help='tokens a chunk (default: as the kernels choose)')
    args = parser.parse_args()
    print(f'triton {triton.__version__}, sm_{args.arch}')
    print('| kernel | K | V | chunk | warps | register cap | registers | spill bytes | shared bytes '
          '| SASS instructions |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for widths in args.widths:
        K, V = map(int, widths.split(':'))
        BT = args.chunk or chunk._chunk_len(4096, K, V)
        shapes = dict(H=6, K=K, V=V, BT=BT, PREC='tf32', QS=6 * K, VS=6 * V)  # contiguous
        for name, kernel, pointers, variant, kernel_launches in KERNELS:
            constexprs = {arg: value for arg, value in dict(shapes, **variant).items() if arg in kernel.arg_names}
            for num_warps, cap in kernel_launches:
                counts = resources(kernel, pointers, constexprs, num_warps, args.arch, cap)
                print(f'| {name} | {K} | {V} | {BT} | {num_warps} | {cap or "-"} | ' + ' | '.join(map(str, counts))
                      + ' |', flush=True)


if __name__ == '__main__':
    main()
