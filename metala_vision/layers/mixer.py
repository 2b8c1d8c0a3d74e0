"""MetaLA token mixer (Chou et al., "MetaLA: Unified Optimal Linear Approximation to Softmax Attention Map",
NeurIPS 2024), as released, with a 2-D short convolution for images.

    x      = silu(short_conv(x))                          short conv: depthwise 3x3 on the patch grid (images),
                                                          3-tap 1-D (sequences) or causal 4-tap 1-D (language)
    q      = x Wq                  [B, N, H, K]           K = D/2: no key projection ...
    log a  = logsigmoid(x Wa) / 16 [B, N, H, K]           ... the key is k = 1 - a (inside metala_attn)
    v      = x Wv                  [B, N, H, D]
    o      = metala_attn(q, log a, v) + sigmoid((q . (k * w_aug)) v)      self-augmentation, w_aug = 0 at init
    y      = Wo (silu(x Wg + b) * LayerNorm_D(o))         LayerNorm per head, no affine
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from metala_kernels import metala_attn, metala_readout

SHORT_CONVS = ('2d', '1d', 'causal', 'none')


class ShortConv(nn.Module):
    """Depthwise short convolution + SiLU on tokens [B, N, C].

    '2d': k x k on the patch grid (tokens after `num_prefix` leading ones are row-major [gh, gw]; the prefix tokens,
    e.g. a class token, only pass through SiLU). '1d': k taps centred. 'causal': k taps on the past (k - 1 left pad).
    'none': SiLU only.  Padded tokens (mask False) are zeroed first so they reach no real token.
    """

    def __init__(self, dim, kind='2d', kernel_size=3):
        super().__init__()
        if kind not in SHORT_CONVS:
            raise ValueError(f'short_conv must be one of {SHORT_CONVS}, got {kind!r}')
        self.kind, self.kernel_size = kind, kernel_size
        if kind == '2d':
            self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
            # the conv runs on channels_last activations, so its weight gradient [C, 1, k, k] comes with
            # channels_last strides (C-stride k*k, 1, k, 1); give the weight the same strides, or DDP warns that
            # the gradient does not match its bucket (laid out like the parameter) and copies it every step
            weight = self.conv.weight.data
            self.conv.weight.data = weight.new_empty_strided(weight.shape, (kernel_size ** 2, 1, kernel_size, 1))
            self.conv.weight.data.copy_(weight)
        elif kind in ('1d', 'causal'):
            self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        else:
            self.conv = None

    def forward(self, x, grid_size=None, num_prefix=0, mask=None):
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if self.kind == '2d':
            if grid_size is None:
                raise ValueError("short_conv='2d' needs grid_size=(gh, gw) of the patch grid")
            prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
            B, N, C = patches.shape
            gh, gw = grid_size
            if gh * gw != N:
                raise ValueError(f'grid_size {tuple(grid_size)} does not match {N} patch tokens')
            # [B, gh, gw, C] seen as NCHW in channels_last memory: no copies around the convolution
            x = self.conv(patches.reshape(B, gh, gw, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(B, N, C)
            if num_prefix:  # no copy of every token when there is no class token
                x = torch.cat([prefix, x], dim=1)
        elif self.conv is not None:
            left = self.kernel_size - 1 if self.kind == 'causal' else (self.kernel_size - 1) // 2
            right = self.kernel_size - 1 - left
            x = self.conv(F.pad(x.transpose(1, 2), (left, right))).transpose(1, 2)
        return F.silu(x)

    def last(self, window):
        """The causal conv + SiLU at the last position of window [B, C, >= kernel_size] (channels first, oldest
        first): [B, 1, C].  One decoding step, without the padding and the outputs that forward would add."""
        if self.kind != 'causal':
            raise ValueError(f"last() is the causal conv's decoding step, not for short_conv={self.kind!r}")
        return F.silu((window[..., -self.kernel_size:] * self.conv.weight[:, 0]).sum(-1))[:, None]


class MetaLAMixer(nn.Module):
    """MetaLA attention over tokens: x [B, N, dim] -> [B, N, dim].

    dim = num_heads * head_dim; query/key-gate width head_dim // 2 per head (head_dim // 2 must be one of 16, 32, 64,
    128, and so must head_dim). causal=False scans both directions (images, LRA); separate_bwd_gates gives the
    backward scan its own gate projection. gate_norm is the 16 of log a = logsigmoid(.) / 16. decay_init=(t_min, t_max)
    adds a bias to the gate projections, initialised so that the initial memory lengths -1 / log a spread log-evenly
    from t_min to t_max tokens over each head's channels (None, as released: no bias, every channel starts at
    -1 / log a = gate_norm / log 2, 23 tokens).
    """

    def __init__(self, dim, num_heads, *, short_conv='2d', conv_size=None, causal=False, separate_bwd_gates=False,
                 gate_norm=16.0, decay_init=None, self_aug=True, norm_eps=1e-5, proj_drop=0.0, backend='auto'):
        super().__init__()
        if decay_init is not None and not (len(decay_init) == 2 and 0 < decay_init[0] <= decay_init[1]):
            raise ValueError(f'decay_init must be (t_min, t_max) memory lengths in tokens with 0 < t_min <= t_max, '
                             f'got {decay_init!r}')
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.key_dim = self.head_dim // 2
        self.causal, self.gate_norm, self.backend = causal, gate_norm, backend
        self.decay_init = None if decay_init is None else tuple(float(t) for t in decay_init)
        conv_size = conv_size or (4 if short_conv == 'causal' else 3)
        self.short_conv = ShortConv(dim, short_conv, conv_size)
        # one in-projection for q, v, the gates and the output gate: one matmul (and one bf16 copy of the weight
        # under autocast) instead of four, which is host time in eager training at 224 px
        scans = 2 if separate_bwd_gates and not causal else 1
        self.in_widths = dict(q=dim // 2, v=dim, gate=scans * dim // 2, out_gate=dim)
        self.in_proj = nn.Linear(dim, sum(self.in_widths.values()), bias=False)
        self.gate_bias = nn.Parameter(torch.zeros(scans * dim // 2)) if decay_init is not None else None
        self.out_gate_bias = nn.Parameter(torch.zeros(dim))
        self.aug_weight = nn.Parameter(torch.zeros(num_heads, self.key_dim)) if self_aug else None
        self.norm_eps = norm_eps  # of the LayerNorm per head (no affine), fused into the readout
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)
        self.init_gate_bias()

    def init_gate_bias(self, copy_=None):
        """Set the gate biases of decay_init (nothing without it): logsigmoid(b) / gate_norm = -1 / t for t
        log-spaced over [t_min, t_max] in each head (of each scan).  Models whose weight init resets parameters
        call this after it (copy_(param, value): their own copy, e.g. transformers' flag-aware one)."""
        if self.decay_init is None:
            return
        t_min, t_max = self.decay_init
        lengths = torch.logspace(math.log10(t_min), math.log10(t_max), self.key_dim, dtype=torch.float64)
        bias = -torch.log(torch.expm1(self.gate_norm / lengths))  # softplus(-b) = norm / t
        with torch.no_grad():
            (copy_ or torch.Tensor.copy_)(self.gate_bias, bias.repeat(self.gate_bias.numel() // self.key_dim))

    def in_bias(self):
        """Bias of the in-projection [sum(in_widths)]: none on q and v (as released), the gate biases of
        decay_init (none without), the output gate's."""
        biased = self.out_gate_bias if self.gate_bias is None else torch.cat((self.gate_bias, self.out_gate_bias))
        return F.pad(biased, (self.in_proj.out_features - biased.numel(), 0))

    def log_decay(self, gate, lower_bound=None):
        """Gate pre-activations [B, N, scans * H * K] -> log a = logsigmoid(.) / gate_norm in fp32 [B, N, scans, H, K].
        With lower_bound b [H * K] in (0, 1) (HGRN's forget-gate floor): log(b + (1 - b) a), so a >= b and the key
        k = 1 - a shrinks to (1 - b)(1 - a)."""
        g = F.logsigmoid(gate.float()).div(self.gate_norm).unflatten(-1, (-1, self.num_heads, self.key_dim))
        if lower_bound is not None:
            b = lower_bound.view(self.num_heads, self.key_dim)
            g = torch.logaddexp(b.log(), torch.log1p(-b) + g)
        return g

    def project(self, x, lower_bound=None):
        """Short-convolved tokens [B, N, dim] -> q, log a, log a of the backward scan (or None): [B, N, H, K];
        v: [B, N, H, D]; output gate: [B, N, dim].  lower_bound: see log_decay (both scans)."""
        q, v, gate, out_gate = F.linear(x, self.in_proj.weight, self.in_bias()).split(
            list(self.in_widths.values()), dim=-1)
        log_decays = self.log_decay(gate, lower_bound)
        g = log_decays[..., 0, :, :]
        g_bwd = log_decays[..., 1, :, :] if log_decays.shape[-3] == 2 else None
        # q, v and the output gate stay views of the in-projection's rows: the Triton kernels read them in place
        # (metala_kernels.chunk.token_rows)
        q, v = q.unflatten(-1, (self.num_heads, self.key_dim)), v.unflatten(-1, (self.num_heads, self.head_dim))
        return q, g, g_bwd, v, out_gate

    def readout(self, o, q, g, v, out_gate):
        """Attention core output o [B, N, H, D] (q, g, v as from project) -> y [B, N, dim]: self-augmentation,
        LayerNorm per head and the output gate in one fused kernel on CUDA, then the output projection."""
        y = metala_readout(o, q, g, v, out_gate.unflatten(-1, (self.num_heads, self.head_dim)), self.aug_weight,
                           self.norm_eps, backend=self.backend)
        return self.proj_drop(self.out_proj(y.flatten(2)))

    def forward(self, x, grid_size=None, num_prefix=0, mask=None, lower_bound=None):
        """x: [B, N, dim]; grid_size (gh, gw) of the patch tokens for the 2-D conv; mask [B, N] bool, True = real;
        lower_bound [dim // 2] of the gates (see log_decay), or None."""
        x = self.short_conv(x, grid_size, num_prefix, mask)
        q, g, g_bwd, v, out_gate = self.project(x, lower_bound)
        o = metala_attn(q, g, v, causal=self.causal, g_bwd=g_bwd, mask=mask, backend=self.backend,
                        check_gates=False)  # logsigmoid: g <= 0 by construction
        y = self.readout(o, q, g, v, out_gate)
        return y if mask is None else y * mask[..., None].to(y.dtype)
