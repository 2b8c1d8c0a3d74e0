"""LRAClassifier: MetaLA blocks over 1-D token sequences for the Long Range Arena tasks.

Tokens (ListOps symbols, text bytes or pixels, as metala_vision.data.lra produces them) -> embedding -> pre-norm
MetaLA blocks (bidirectional scan, centred 3-tap short conv: no 2-D prior on the pixel tasks, as LRA requires)
-> LayerNorm -> masked mean over the real tokens -> classifier.  Padded tokens reach no real token: the mixer
zeroes them before its convolution and the scan neither writes nor decays at them.  Retrieval (paired=True)
encodes both documents with the same encoder and classifies [u, v, u * v, u - v].
"""
import torch
from torch import nn

from metala_vision.layers import MetaLABlock, MetaLAMixer


def masked_mean(x, mask):
    """x [B, T, D] averaged over the real tokens of mask [B, T] (True = real) -> [B, D]; 0 where a row has none."""
    weights = mask[..., None].to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1)


class LRAClassifier(nn.Module):
    """ids [B, T] (+ mask [B, T], True = real token) -> logits [B, num_classes];
    with paired=True: forward(ids1, mask1, ids2, mask2).  init_values: layer scale on both branches of every
    block (timm's LayerScale); without it a deep stack was slow to carry the first token's cue into the mean
    (benchmarks/lra.md).  gate_lower_bounds: HGRN's learned floors of the decays (Qin et al., "Hierarchically
    Gated Recurrent Neural Network for Sequence Modeling", NeurIPS 2023): per gate channel, a softmax over the
    blocks, summed up to each block and less the first block's share, so the floor is 0 in the first block and
    rises with depth (l / depth at init): upper blocks keep long memories."""

    def __init__(self, vocab_size, num_classes, max_len, dim=128, depth=4, num_heads=None, mlp_ratio=2.0,
                 mlp_layer='gelu', pos_embed=False, init_values=None, drop_rate=0.0, drop_path_rate=0.0,
                 separate_bwd_gates=False, gate_norm=16.0, decay_init=None, gate_lower_bounds=False, paired=False,
                 backend='auto'):
        super().__init__()
        num_heads = num_heads or max(1, dim // 64)
        self.paired, self.max_len = paired, max_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, dim) * .02) if pos_embed else None
        self.embed_drop = nn.Dropout(drop_rate)
        drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            MetaLABlock(dim, num_heads, mlp_ratio, mlp_layer, drop_path[i], init_values, proj_drop=drop_rate,
                        short_conv='1d', separate_bwd_gates=separate_bwd_gates, gate_norm=gate_norm,
                        decay_init=decay_init, backend=backend)
            for i in range(depth)])
        self.gate_lower_bounds = nn.Parameter(torch.zeros(depth, dim // 2)) if gate_lower_bounds else None
        self.norm = nn.LayerNorm(dim)
        features = 4 * dim if paired else dim
        self.head = nn.Sequential(nn.Linear(features, dim), nn.GELU(), nn.Dropout(drop_rate),
                                  nn.Linear(dim, num_classes)) if paired else nn.Linear(dim, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=.02)
        elif isinstance(m, MetaLAMixer):  # after its linears (apply visits children first)
            m.init_gate_bias()

    def no_weight_decay(self):
        return {'pos_embed', 'gate_lower_bounds'} | {n for n, _ in self.named_parameters() if n.endswith('.aug_weight')}

    def lower_bounds(self):
        """The decays' floor of each block: [None (block 0), [dim // 2], ...], or all None without the option."""
        if self.gate_lower_bounds is None:
            return [None] * len(self.blocks)
        bounds = self.gate_lower_bounds.float().softmax(0).cumsum(0)
        return [None] + list((bounds[1:] - bounds[0]).unbind(0))

    def encode(self, ids, mask=None):
        """ids [B, T] -> pooled features [B, dim]: the mean over real tokens."""
        B, T = ids.shape
        if T > self.max_len:
            raise ValueError(f'ids has {T} tokens, more than max_len={self.max_len}')
        if mask is not None and tuple(mask.shape) != (B, T):
            raise ValueError(f'mask must have the shape of ids [B, T] = [{B}, {T}], got {tuple(mask.shape)}')
        x = self.embed(ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, :T]
        x = self.embed_drop(x)
        for blk, lower_bound in zip(self.blocks, self.lower_bounds()):
            x = blk(x, mask=mask, gate_lower_bound=lower_bound)
        x = self.norm(x)
        return x.mean(1) if mask is None else masked_mean(x, mask)

    def forward(self, ids, mask=None, ids2=None, mask2=None):
        if not self.paired:
            return self.head(self.encode(ids, mask))
        if ids2 is None:
            raise ValueError('a paired (retrieval) classifier takes two sequences: forward(ids1, mask1, ids2, mask2)')
        u, v = self.encode(ids, mask), self.encode(ids2, mask2)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
