"""Is the generated Pathfinder learnable by a model with a 2-D prior?  A residual CNN (8 blocks of width 64,
dilations 1-8, global max pooling) trained on the images that scripts/lra.py generates (same cache_dir, seed and
split), printing validation accuracy as JSON lines.  A check of the data, not an LRA model (LRA reads pixels as a
sequence, with no 2-D prior); its result is in benchmarks/lra.md.

    python scripts/pathfinder_cnn.py --cache-dir DIR [--seconds 300] [--difficulty hard] [--num-examples N]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from metala_vision.data.lra import build_lra_datasets, lra_collate_fn


class ResBlock(nn.Module):
    """x [B, C, H, W] -> relu(x + BN(conv3x3(relu(BN(dilated conv3x3(x))))))."""

    def __init__(self, channels, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1, self.norm2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


def pathfinder_cnn(width=64, dilations=(1, 2, 4, 8, 1, 2, 4, 8)):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         *[ResBlock(width, d) for d in dilations],
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def as_images(dataset, device):
    """Pixel-token dataset -> (images [N, 1, 32, 32] in [0, 1], labels [N]) on device."""
    pixels, _, labels = lra_collate_fn('pathfinder')([dataset[i] for i in range(len(dataset))])
    return pixels.view(-1, 1, 32, 32).to(device).float() / 255., labels.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cache-dir', required=True)
    parser.add_argument('--seconds', type=float, default=300)
    parser.add_argument('--difficulty', default='hard', choices=['easy', 'intermediate', 'hard'])
    parser.add_argument('--num-examples', type=int, help='generated images (default: LRA\'s 200,000)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--eval-every', type=int, default=500)
    args = parser.parse_args(argv)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    train, val, _ = build_lra_datasets('pathfinder', cache_dir=args.cache_dir, difficulty=args.difficulty,
                                       num_examples=args.num_examples)
    (x_train, y_train), (x_val, y_val) = as_images(train, device), as_images(val, device)
    net = pathfinder_cnn().to(device)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.01)
    start, step = time.time(), 0
    while time.time() - start < args.seconds:
        idx = torch.randint(0, len(y_train), (args.batch_size,), device=device)
        with torch.autocast(device, torch.bfloat16, enabled=device == 'cuda'):
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.eval_every == 0:
            net.eval()
            with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=device == 'cuda'):
                correct = sum((net(x_val[i:i + 1000]).argmax(1) == y_val[i:i + 1000]).sum().item()
                              for i in range(0, len(y_val), 1000))
            net.train()
            print(json.dumps(dict(step=step, loss=round(loss.item(), 4), val_acc=round(100 * correct / len(y_val), 2),
                                  seconds=round(time.time() - start))), flush=True)


if __name__ == '__main__':
    main()
