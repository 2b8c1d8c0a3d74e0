"""The image mixer's short convolution, a depthwise k x k convolution + SiLU over the patch grid, in one Triton
kernel (and two for its backward):

    y[b, i, j, c] = silu(z[b, i, j, c]),   z[b, i, j, c] = sum_{di, dj} w[c, di, dj] x[b, i + di - p, j + dj - p, c]

with p = k // 2 and zeros outside the grid.  x: [B, gh * gw, C] tokens of a row-major grid (channels contiguous, any
token and batch strides: a view of the tokens after a class token reads in place); w: [C, 1, k, k] (a depthwise
nn.Conv2d's weight, read as [C, k * k]); y: [B, gh * gw, C] contiguous in x's dtype, accumulated in fp32.  Each
program takes a block of tokens and of channels and reads its k^2 shifted copies (the neighbours come from the
caches): x is read from memory about once and y written once.  The backward recomputes z for dz = dy silu'(z) (in
dy's dtype), then reads dz's mirrored taps once for both dx (their convolution with w) and dw (their products with
the block's own x, summed per block in fp32 and over the blocks in a fixed order).  metala_kernels.short_conv2d is
the entry point; its PyTorch path is F.conv2d on the channels-last view, then SiLU.
"""
import torch
import triton
import triton.language as tl

from .dispatch import kernel_op

# A program's block: tokens, channels (at most), warps.  Untimed; at sm_90 (triton 3.6) 32 x 32 with 4 warps holds
# 96 / 109 / 158 registers (forward / dz / dx and dw) without spills; 64 x 64 spilled.
# scripts/bench_short_conv.py --configs times others.
LAUNCH = dict(tokens=32, channels=32, warps=4)


@triton.jit
def _tap(at, w, i, j, live, c, live_c, gh, gw, RS, si, sj, di, dj, KS: tl.constexpr):
    """Tap (di, dj) for tokens at grid (i, j) [BN], channels c [BC]: the tokens shifted by (si, sj) from `at` (their
    pointers [BN, BC], rows RS apart; zeros outside the grid) in fp32 [BN, BC], and w[c, di, dj] in fp32 [BC]."""
    inside = live & (i + si >= 0) & (i + si < gh) & (j + sj >= 0) & (j + sj < gw)
    tap = tl.load(at + (si * gw + sj) * RS, mask=inside[:, None] & live_c[None, :], other=0.).to(tl.float32)
    return tap, tl.load(w + c * (KS * KS) + di * KS + dj, mask=live_c, other=0.).to(tl.float32)


@triton.jit
def _conv(x, w, n, live, c, live_c, gh, gw, XR, KS: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """sum over the k x k taps of w[c, tap] x[the token at tap's offset from n, c] for tokens n [BN] and channels
    c [BC] -> [BN, BC] in fp32."""
    i, j = n // gw, n % gw
    at = x + n[:, None] * XR + c[None, :]  # the block's own tokens; a tap is a shift of them
    acc = tl.zeros([BN, BC], dtype=tl.float32)
    for di in tl.static_range(KS):
        for dj in tl.static_range(KS):
            tap, weight = _tap(at, w, i, j, live, c, live_c, gh, gw, XR, di - KS // 2, dj - KS // 2, di, dj, KS)
            acc += tap * weight[None, :]
    return acc


@triton.jit
def _block(gh, gw, C, BN: tl.constexpr, BC: tl.constexpr):
    """This program's tokens n [BN] and channels c [BC] of batch b, with their masks."""
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    return n, n < gh * gw, c, c < C, tl.program_id(2).to(tl.int64)


@triton.jit
def _dwconv_fwd_kernel(x, w, y, gh, gw, C, XB, XR, KS: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """y = silu(z) for a block of tokens and channels; grid (token blocks, channel blocks, B)."""
    n, live, c, live_c, b = _block(gh, gw, C, BN, BC)
    z = _conv(x + b * XB, w, n, live, c, live_c, gh, gw, XR, KS, BN, BC)
    out = y + b * gh * gw * C + n[:, None] * C + c[None, :]
    tl.store(out, (z * tl.sigmoid(z)).to(y.dtype.element_ty), mask=live[:, None] & live_c[None, :])


@triton.jit
def _dwconv_dz_kernel(x, w, dy, dz, gh, gw, C, XB, XR, KS: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """dz = dy silu'(z) (z recomputed) for a block."""
    n, live, c, live_c, b = _block(gh, gw, C, BN, BC)
    z = _conv(x + b * XB, w, n, live, c, live_c, gh, gw, XR, KS, BN, BC)
    at = b * gh * gw * C + n[:, None] * C + c[None, :]
    both = live[:, None] & live_c[None, :]
    s = tl.sigmoid(z)
    d = tl.load(dy + at, mask=both, other=0.).to(tl.float32) * s * (1 + z * (1 - s))
    tl.store(dz + at, d.to(dz.dtype.element_ty), mask=both)


@triton.jit
def _dwconv_dx_kernel(x, dz, w, dx, dw_part, gh, gw, C, XB, XR, KS: tl.constexpr, BN: tl.constexpr,
                      BC: tl.constexpr):
    """dx = the convolution of dz with the mirrored taps for a block, and its part of dw: dw_part[b, token block,
    tap, c] = the sum over the block's tokens n of x[n] dz[n - tap's offset]."""
    n, live, c, live_c, b = _block(gh, gw, C, BN, BC)
    both = live[:, None] & live_c[None, :]
    xn = tl.load(x + b * XB + n[:, None] * XR + c[None, :], mask=both, other=0.).to(tl.float32)
    i, j = n // gw, n % gw
    at = dz + b * gh * gw * C + n[:, None] * C + c[None, :]
    part = dw_part + ((b * tl.num_programs(0) + tl.program_id(0)) * KS * KS) * C + c
    acc = tl.zeros([BN, BC], dtype=tl.float32)
    for di in tl.static_range(KS):
        for dj in tl.static_range(KS):  # dz at the mirrored offset
            tap, weight = _tap(at, w, i, j, live, c, live_c, gh, gw, C, KS // 2 - di, KS // 2 - dj, di, dj, KS)
            acc += tap * weight[None, :]
            tl.store(part + (di * KS + dj) * C, tl.sum(tap * xn, axis=0), mask=live_c)
    tl.store(dx + b * gh * gw * C + n[:, None] * C + c[None, :], acc.to(dx.dtype.element_ty), mask=both)


def _launch(x, gh, gw):
    """grid (token blocks, channel blocks, B) and the blocks' constants."""
    B, _, C = x.shape
    BN, BC = LAUNCH['tokens'], min(LAUNCH['channels'], triton.next_power_of_2(C))
    return (triton.cdiv(gh * gw, BN), triton.cdiv(C, BC), B), dict(BN=BN, BC=BC, num_warps=LAUNCH['warps'])


def _rows(x):
    """x [B, N, C] with contiguous channels (a copy otherwise)."""
    return x if x.stride(2) == 1 else x.contiguous()


def _dwconv_fwd(x: torch.Tensor, w: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    x = _rows(x)
    grid, blocks = _launch(x, gh, gw)
    y = x.new_empty(x.shape)
    _dwconv_fwd_kernel[grid](x, w, y, gh, gw, x.shape[2], x.stride(0), x.stride(1), KS=_taps(w), **blocks)
    return y


def _dwconv_bwd(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, gh: int, gw: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> dx [B, N, C] (x's dtype), dw [C, 1, k, k] (w's dtype and strides)."""
    x, dy = _rows(x), dy.contiguous()
    grid, blocks = _launch(x, gh, gw)
    B, N, C = x.shape
    dz, dx = dy.new_empty(x.shape), x.new_empty(x.shape)
    dw_part = torch.empty(B, grid[0], w[0].numel(), C, dtype=torch.float32, device=x.device)
    KS = _taps(w)
    _dwconv_dz_kernel[grid](x, w, dy, dz, gh, gw, C, x.stride(0), x.stride(1), KS=KS, **blocks)
    _dwconv_dx_kernel[grid](x, dz, w, dx, dw_part, gh, gw, C, x.stride(0), x.stride(1), KS=KS, **blocks)
    dw = torch.empty_like(w)
    dw.view(C, -1).copy_(dw_part.sum((0, 1)).t())
    return dx, dw


def _taps(w):
    return w.shape[-1]


def _dwconv_fwd_fake(x, w, gh, gw):
    return x.new_empty(x.shape)


def _dwconv_bwd_fake(x, w, dy, gh, gw):
    return x.new_empty(x.shape), w.new_empty(w.shape)


def _setup_context(ctx, inputs, output):
    x, w, ctx.gh, ctx.gw = inputs
    ctx.save_for_backward(x, w)


def _input_grads(ctx, dy, dwconv_bwd):
    x, w = ctx.saved_tensors
    dx, dw = dwconv_bwd(x, w, dy, ctx.gh, ctx.gw)
    return dx, dw, None, None


dwconv_silu = kernel_op('metala_kernels::dwconv_silu', _dwconv_fwd, _dwconv_bwd, _dwconv_fwd_fake, _dwconv_bwd_fake,
                        _setup_context, _input_grads)
