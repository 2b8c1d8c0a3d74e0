"""Side by side: training runs of scripts/train_imagenet.py (their log.jsonl), as a markdown table and curves.

    python scripts/compare_runs.py output/metala_vit_t output/deit_tiny --out benchmarks/training.md [--title ...]

The table gives each run's model, epochs, best and last val top-1, last val loss, train img/s and peak CUDA
memory (from the 'epoch' records); the PNG beside --out plots train loss per update and val top-1 per epoch.
"""
import argparse
from pathlib import Path

import yaml

from metala_vision.training import read_jsonl


def load_run(folder):
    """(name, settings, train records, epoch records) of a run folder."""
    folder = Path(folder)
    records = read_jsonl(folder / 'log.jsonl')
    settings = yaml.safe_load((folder / 'config.yaml').read_text()) if (folder / 'config.yaml').exists() else {}
    epochs = [r for r in records if r['event'] == 'epoch']
    if not epochs:
        raise SystemExit(f'{folder}/log.jsonl has no finished epoch')
    return folder.name, settings, [r for r in records if r['event'] == 'train'], epochs


def table(runs):
    lines = ['| run | model | epochs | best val top-1 (epoch) | last val top-1 | last val loss | train img/s | '
             'peak GiB |', '|---|---|---|---|---|---|---|---|']
    for name, settings, _, epochs in runs:
        last = epochs[-1]
        img_s = sum(r['train_img_per_s'] for r in epochs) / len(epochs)
        peak = max((r['peak_mem_gib'] or 0) for r in epochs) or None
        lines.append(f"| {name} | {settings.get('model', '?')} | {last['epoch']} | {last['best_top1']:.2f} "
                     f"({last['best_epoch']}) | {last['val_top1']:.2f} | {last['val_loss']:.4f} | {img_s:,.0f} | "
                     f"{'n/a' if peak is None else f'{peak:.2f}'} |")
    return '\n'.join(lines)


def plot(runs, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, _, train, epochs in runs:
        loss_ax.plot([r['update'] for r in train], [r['loss'] for r in train], label=name, lw=1)
        acc_ax.plot([r['epoch'] for r in epochs], [r['val_top1'] for r in epochs], '-o', label=name, ms=3)
    loss_ax.set(title='train loss', xlabel='update')
    acc_ax.set(title='val top-1 (%)', xlabel='epoch')
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run folders written by scripts/train_imagenet.py')
    parser.add_argument('--out', default='benchmarks/training.md', help='the table; the PNG goes beside it')
    parser.add_argument('--title', default='training runs side by side')
    args = parser.parse_args()
    runs = [load_run(folder) for folder in args.runs]
    out = Path(args.out)
    plot(runs, out.with_suffix('.png'), args.title)
    out.write_text(f'# {args.title}\n\n{table(runs)}\n\n![curves]({out.with_suffix(".png").name})\n')
    print(out.read_text())


if __name__ == '__main__':
    main()
