"""Where a training step goes: wall time per step with and without torch.profiler, the kernels' summed time, and
the top ops by device time and by host (CPU) time.  A step much longer than its kernels waits on the host's Python
(benchmarks/models.md, session 9: metala_vit_s 72 ms a step for 37 ms of kernels, deit_small 42 for 24).

    python scripts/profile_step.py [--models metala_vit_s deit_small_patch16_224] [--res 224] [--batch 128]
                                   [--steps 5] [--device cuda|cpu]

A step is forward + backward + AdamW (fused on CUDA) under bf16 autocast on CUDA; --device cpu runs it in fp32, a
check of the script rather than a profile worth reading.
"""
import argparse
import time

import timm
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import metala_vision  # noqa: F401  (registers the models)


def profile_step(name, res, batch, steps, device, **model_kwargs):
    """-> dict(wall_ms, profiled_ms, kernel_ms: per step; by_device, by_host: the top-op tables) of model `name`."""
    cuda = device == 'cuda'
    model = timm.create_model(name, img_size=res, num_classes=1000, **model_kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-4, fused=cuda)
    x = torch.randn(batch, 3, res, res, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def run(n):
        """Seconds a step over n steps."""
        start = time.perf_counter()
        for _ in range(n):
            with torch.autocast(device, torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(model(x), y)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['metala_vit_s', 'deit_small_patch16_224'])
    parser.add_argument('--res', type=int, default=224)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--steps', type=int, default=5, help='steps profiled (and timed without the profiler)')
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    args = parser.parse_args()
    for name in args.models:
        r = profile_step(name, args.res, args.batch, args.steps, args.device)
        print(f"== {name}, {args.res} px, batch {args.batch}: {r['wall_ms']:.2f} ms a step "
              f"({r['profiled_ms']:.2f} profiled), kernels {r['kernel_ms']:.2f} ms a step")
        print(r['by_device'])
        print(r['by_host'])


if __name__ == '__main__':
    main()
