"""Host time of metala_attn: what a call costs the CPU, measured on any machine (no GPU needed).

Triton's own launch path runs (argument binding, specialization, its kernel cache, our autotuning launcher) under a
stand-in driver that compiles and launches nothing: the calls cost the host what they cost it on a GPU machine but
for the driver's C launch (cuLaunchKernel, a few us a launch) and the CUDA allocator.  Where the kernels take less
time than that, a call from Python is bound by it (bench_ops.py's whole-op rows at T 197, B <= 128).  The tensors
are CPU tensors: large ones cost more to allocate than from the CUDA caching allocator (here about 50 us a forward +
backward at B 256 T 197, 8 at B 32).  Prints a
markdown table: the path the shape takes (_recompute_states, _carries), the launches a call makes, and the medians
over --rounds of the mean host time of --calls calls, forward and forward + backward.

    python scripts/host_time.py [--shapes B:T:H ...] [--widths K:V] [--causal] [--sms 132] [--no-autotune]
"""
import argparse
import contextlib
import os
import statistics
import time

os.environ.pop('TRITON_INTERPRET', None)  # Triton's launch path, not its interpreter

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


class _Kernel:
    """A kernel 'compiled' with options (num_warps, num_stages, ...): its launches append it to launched."""
    function = packed_metadata = None

    def __init__(self, options, launched):
        self.options, self.launched = options, launched

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *launch):
        """(grid x, y, z, stream, function, metadata, launch metadata, two hooks, *arguments), as the driver's
        launcher takes them; that launcher reads each tensor's data_ptr."""
        for x in launch[9:]:
            if isinstance(x, torch.Tensor):
                x.data_ptr()
        self.launched.append(self)


class _Driver:
    """The stand-in for Triton's CUDA driver, an sm_90 target: a device of its own for each use (the kernels'
    caches are per device: no real device's cache, nor an earlier use's, holds this use's _Kernels)."""
    uses = 0

    def __init__(self):
        _Driver.uses += 1
        self.device = f'host_time:{_Driver.uses}'

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget('cuda', 90, 32)


@contextlib.contextmanager
def stand_in_driver(timing=lambda config: 1.0):
    """Within: Triton launches through JITFunction.run as on a GPU, against _Driver; a compile makes a _Kernel, and
    the autotuner times a config as timing(config) ms.  Yields the list of launched _Kernels."""
    launched = []
    saved = driver._active, JITFunction._do_compile, Autotuner._bench

    def compile_nothing(fn, key, signature, device, constexprs, options, attrs, warmup):
        kernel = fn.device_caches[device][0][key] = _Kernel(options, launched)
        return kernel

    driver.set_active(_Driver())
    JITFunction._do_compile = compile_nothing
    Autotuner._bench = lambda tuner, *args, config, **kwargs: [timing(config)] * 3
    try:
        yield launched
    finally:
        driver._active, JITFunction._do_compile, Autotuner._bench = saved


def host_us(fn, calls, rounds):
    """Median over rounds of the mean wall time of calls calls of fn, in us."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def measure(B, T, H, K, V, causal, calls, rounds):
    """-> (path, launches forward, launches fwd+bwd, host us forward, host us fwd+bwd) at one shape, bf16 CPU
    tensors on the Triton path under the stand-in driver."""
    from metala_kernels import chunk, metala_attn
    q = torch.randn(B, T, H, K, dtype=torch.bfloat16, requires_grad=True)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K)).div(16).requires_grad_()
    v = torch.randn(B, T, H, V, dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, T, H, V, dtype=torch.bfloat16)

    def forward():
        return metala_attn(q, g, v, causal=causal, backend='triton', check_gates=False)

    def train():
        forward().backward(do)
        q.grad = g.grad = v.grad = None

    NT = -(-T // chunk._chunk_len(T, K, V))
    path = 'recomputed' if chunk._recompute_states(NT, B * H, q.device) else \
        'carried' if chunk._carries(NT, B * H, q.device) else 'combined'
    with stand_in_driver() as launched:
        counts = []
        for fn in (forward, train):
            fn()  # 'compiles' and tunes
            launched.clear()
            fn()
            counts.append(len(launched))
        times = [host_us(fn, calls, rounds) for fn in (forward, train)]
    return (path, *counts, *times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shapes', nargs='+', default=['32:197:6', '128:197:6', '256:197:6', '64:1024:6',
                                                        '2:16384:6'], help='B:T:H')
    parser.add_argument('--widths', default='32:64', help='K:V')
    parser.add_argument('--causal', action='store_true')
    parser.add_argument('--sms', type=int, default=132, help="the GPU's SMs, which pick the path (H100, H200: 132)")
    parser.add_argument('--no-autotune', action='store_true', help='as METALA_AUTOTUNE=0: no tuning, first config')
    parser.add_argument('--calls', type=int, default=200)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    if args.no_autotune:
        os.environ['METALA_AUTOTUNE'] = '0'  # read when metala_kernels.chunk is imported, below
    from metala_kernels import chunk
    chunk._sm_count = lambda device: args.sms
    K, V = map(int, args.widths.split(':'))
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, triton {__import__("triton").__version__}, {os.cpu_count()} CPUs, '
          f'{"causal" if args.causal else "bidirectional"}, K {K} V {V}, {args.sms} SMs, '
          f'autotune {"off" if args.no_autotune else "on"}; host us, median of {args.rounds} x {args.calls} calls\n')
    print('| B | T | H | states | launches fwd | launches fwd+bwd | host us fwd | host us fwd+bwd |')
    print('|---|---|---|---|---|---|---|---|')
    for shape in args.shapes:
        B, T, H = map(int, shape.split(':'))
        path, n_fwd, n_train, us_fwd, us_train = measure(B, T, H, K, V, args.causal, args.calls, args.rounds)
        print(f'| {B} | {T} | {H} | {path} | {n_fwd} | {n_train} | {us_fwd:.0f} | {us_train:.0f} |', flush=True)


if __name__ == '__main__':
    main()
