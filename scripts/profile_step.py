"""Where a training step goes: wall time per step with and without torch.profiler, the kernels' summed time, and
the top ops by device time and by host (CPU) time.  A step much longer than its kernels waits on the host's Python
(benchmarks/models.md, session 9: metala_vit_s 72 ms a step for 37 ms of kernels, deit_small 42 for 24).

    python scripts/profile_step.py [--models metala_vit_s deit_small_patch16_224] [--res 224] [--batch 128]
                                   [--compile [MODE]] [--steps 5] [--device cuda|cpu]
    python scripts/profile_step.py --lra configs/lra/listops.yaml [key=value ...] [--steps 5] [--device cuda|cpu]

A step is forward + backward + AdamW (fused on CUDA) under bf16 autocast on CUDA; --device cpu runs it in fp32, a
check of the script rather than a profile worth reading.  --lra profiles the LRAClassifier that scripts/lra.py
builds from that config (and overrides), at the config's batch size, on random tokens padded to the task's length
with a mask of random lengths from a quarter of it to all of it (ListOps' 500-2,000 of 2,000).  --compile runs
the --models compiled (torch.compile, inductor, in that mode), as bench_models.py --compile times them; an LRA
config compiles its classifier itself (torchcompile=...).  On CUDA cuDNN's benchmark mode is on, as in
bench_models.py and timm's benchmark.py.
"""
import argparse
import importlib.util
import logging
import time
from pathlib import Path

import timm
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import metala_vision  # noqa: F401  (registers the models)
from metala_vision.training import COMPILE_MODES, compile_in_place


def vit_case(name, res, batch, device, compile_mode=None, **model_kwargs):
    """(model, inputs, labels) of a timm model `name` at res px; compiled in place (inductor) in compile_mode, one of
    COMPILE_MODES, if given."""
    model = timm.create_model(name, img_size=res, num_classes=1000, **model_kwargs).to(device)
    compile_in_place(model, dict(torchcompile='inductor' if compile_mode else None,
                                 torchcompile_mode=None if compile_mode == 'default' else compile_mode),
                     logging.getLogger(__name__))
    return model, (torch.randn(batch, 3, res, res, device=device),), torch.randint(0, 1000, (batch,), device=device)


def lra_case(config, overrides, device):
    """(model, inputs, labels) of the LRA classifier scripts/lra.py builds from config and overrides (compiled in place
    where they set torchcompile)."""
    spec = importlib.util.spec_from_file_location('_lra_script', Path(__file__).with_name('lra.py'))
    lra = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lra)
    cfg = lra.resolve_config(lra.parse_args(['--config', config, *overrides]))
    info = lra.LRA_TASKS[cfg['task']]
    B, T = cfg['batch_size'], cfg['max_len']
    ids = torch.randint(1, info.vocab_size, (B, T), device=device)
    mask = torch.arange(T, device=device)[None] < torch.randint(T // 4, T + 1, (B, 1), device=device)
    inputs = (ids, mask) * (2 if info.paired else 1)
    model = lra.build_model(cfg).to(device)
    compile_in_place(model, cfg, logging.getLogger(__name__))  # torchcompile=inductor ...: as lra.py trains it
    return model, inputs, torch.randint(0, info.num_classes, (B,), device=device)


def profile_step(model, inputs, labels, steps, device):
    """-> dict(wall_ms, profiled_ms, kernel_ms: per step; by_device, by_host: the top-op tables) of model(*inputs)
    trained on labels."""
    cuda = device == 'cuda'
    opt = torch.optim.AdamW(model.parameters(), 1e-4, fused=cuda)

    def run(n):
        """Seconds a step over n steps."""
        start = time.perf_counter()
        for _ in range(n):
            with torch.autocast(device, torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(model(*inputs), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    run(3)  # compiles, autotunes, fills the allocator
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        profiled = run(steps)
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    return dict(wall_ms=run(steps) * 1e3, profiled_ms=profiled * 1e3, kernel_ms=kernel_us / steps / 1e3,
                by_device=events.table(sort_by='self_device_time_total', row_limit=20, max_name_column_width=70)
                if cuda else '',
                by_host=events.table(sort_by='self_cpu_time_total', row_limit=25, max_name_column_width=70))


def report(title, r):
    print(f"== {title}: {r['wall_ms']:.2f} ms a step ({r['profiled_ms']:.2f} profiled), kernels "
          f"{r['kernel_ms']:.2f} ms a step")
    print(r['by_device'])
    print(r['by_host'])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['metala_vit_s', 'deit_small_patch16_224'])
    parser.add_argument('--res', type=int, default=224)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--lra', metavar='CONFIG', help="an LRA config (configs/lra/*.yaml): profile its classifier "
                        "instead of --models (--res and --batch do not apply)")
    parser.add_argument('overrides', nargs='*', metavar='key=value', help='settings of the --lra config to override')
    parser.add_argument('--compile', nargs='?', const='default', choices=COMPILE_MODES, default=None, metavar='MODE',
                        help='profile the --models compiled with inductor in a mode of %(choices)s (default mode if '
                        'none is given); eager without it')
    parser.add_argument('--steps', type=int, default=5, help='steps profiled (and timed without the profiler)')
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    args = parser.parse_args()
    if args.overrides and not args.lra:
        parser.error('key=value overrides go with --lra')
    if args.compile and args.lra:
        parser.error('--compile goes with --models; an LRA config compiles with torchcompile=... overrides')
    torch.backends.cudnn.benchmark = args.device == 'cuda'  # as bench_models.py: each convolution's fastest algorithm
    if args.lra:
        model, inputs, labels = lra_case(args.lra, args.overrides, args.device)
        B, T = inputs[0].shape
        report(f'{args.lra} {" ".join(args.overrides)}, batch {B}, {T} tokens',
               profile_step(model, inputs, labels, args.steps, args.device))
        return
    for name in args.models:
        r = profile_step(*vit_case(name, args.res, args.batch, args.device, args.compile), args.steps, args.device)
        report(f'{name}, {args.res} px, batch {args.batch}' + (f', compiled ({args.compile})' if args.compile else ''),
               r)


if __name__ == '__main__':
    main()
