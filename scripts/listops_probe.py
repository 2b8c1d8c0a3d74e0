"""ListOps at short lengths on the CPU: does a model learn the task where the sequence length is not what stops it?

Generates ListOps by LRA's rules but 30-150 tokens long by default (mean 74; --min-length / --max-length: LRA's
own are 500 / 2000; 20,000 training and 1,000 validation expressions, seed 1) and trains one model on one thread,
printing the validation accuracy every --eval-every updates: our LRAClassifier (the LRA configs' recipe at width 64:
depth 4, one head, positions, layer scale 0.1), the same blocks with softmax attention (timm's ViT Block, masked), or
a 2-layer bidirectional GRU, each with masked mean pooling.
AdamW (weight decay 0.01), batch 32, gradients clipped at 1. benchmarks/lra.md holds what it printed.

    python scripts/listops_probe.py --model metala|attention|gru [--steps 3000] [--lr LR] [--min-length 30]
                                    [--max-length 150] [--train 20000] [--val 1000] [key=value ...]

key=value: LRAClassifier arguments for metala (gate_norm=1.0, separate_bwd_gates=True, ...); dim, depth, heads for
attention.
"""
import argparse
import ast
import time

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from metala_vision.data.lra import LRA_TASKS, ListOpsConfig, encode_listops, generate_listops, lra_collate_fn
from metala_vision.models.lra import LRAClassifier, masked_mean

VOCAB, CLASSES = LRA_TASKS['listops'].vocab_size, LRA_TASKS['listops'].num_classes


class AttentionClassifier(nn.Module):
    """LRAClassifier's layout with softmax attention: embedding + positions, pre-norm blocks, masked mean, head."""

    def __init__(self, max_len, dim=64, depth=4, heads=1):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, dim) * .02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio=2.0, init_values=0.1) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, CLASSES)

    def forward(self, ids, mask):
        x = self.embed(ids) + self.pos_embed[:, :ids.shape[1]]
        for block in self.blocks:
            x = block(x, attn_mask=mask[:, None, None, :])  # keys: the real tokens
        return self.head(self.norm(masked_mean(x, mask)))


class GRUClassifier(nn.Module):
    """Embedding, a 2-layer bidirectional GRU of width 64, masked mean, head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        self.rnn = nn.GRU(64, 64, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(128, CLASSES)

    def forward(self, ids, mask):
        return self.head(masked_mean(self.rnn(self.embed(ids))[0], mask))


def build(name, max_len, overrides):
    """-> (model for sequences of up to max_len tokens, default lr)."""
    if name == 'gru':
        return GRUClassifier(), 1e-3
    if name == 'attention':
        return AttentionClassifier(max_len, **overrides), 1e-3
    args = {**dict(dim=64, depth=4, num_heads=1, pos_embed=True, init_values=0.1), **overrides}
    return LRAClassifier(VOCAB, CLASSES, max_len, **args), 3e-3


def accuracy(model, examples, collate):
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(examples), 100):
            ids, mask, labels = collate(examples[i:i + 100])
            hits += (model(ids, mask).argmax(-1) == labels).sum().item()
    model.train()
    return 100 * hits / len(examples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', choices=('metala', 'attention', 'gru'), required=True)
    parser.add_argument('--steps', type=int, default=3000)
    parser.add_argument('--eval-every', type=int, default=300)
    parser.add_argument('--lr', type=float, default=None, help='default: 3e-3 metala, 1e-3 the others')
    parser.add_argument('--min-length', type=int, default=30, help='expressions have more tokens than this ...')
    parser.add_argument('--max-length', type=int, default=150, help='... and fewer than this')
    parser.add_argument('--train', type=int, default=20_000, help='training expressions')
    parser.add_argument('--val', type=int, default=1_000, help='validation expressions')
    parser.add_argument('overrides', nargs='*', metavar='key=value')
    args = parser.parse_args()
    overrides = {k: ast.literal_eval(v) for k, v in (item.split('=', 1) for item in args.overrides)}
    torch.set_num_threads(1)
    rules = ListOpsConfig(num_train=args.train, num_val=args.val, num_test=1, min_length=args.min_length,
                          max_length=args.max_length)
    examples = [(torch.from_numpy(encode_listops(source).astype('int64')), label)
                for source, label in generate_listops(args.train + args.val, seed=1, config=rules, num_workers=1)]
    train, val = examples[:args.train], examples[args.train:]
    collate = lra_collate_fn('listops')
    torch.manual_seed(0)
    model, lr = build(args.model, args.max_length, overrides)
    lr = args.lr or lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    print(f'{args.model} {overrides} lr {lr}: {len(train)} / {len(val)} expressions, mean length '
          f'{sum(len(ids) for ids, _ in examples) / len(examples):.1f} tokens', flush=True)
    order, start, step = torch.Generator().manual_seed(0), time.time(), 0
    while step < args.steps:
        perm = torch.randperm(len(train), generator=order).tolist()
        for i in range(0, len(train) - 31, 32):
            ids, mask, labels = collate([train[j] for j in perm[i:i + 32]])
            loss = F.cross_entropy(model(ids, mask), labels)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                print(f'{args.model} step {step} ({time.time() - start:.0f} s): loss {loss.item():.3f}, validation '
                      f'accuracy {accuracy(model, val, collate):.2f}%', flush=True)
            if step == args.steps:
                break


if __name__ == '__main__':
    main()
