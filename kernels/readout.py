"""MetaLA's readout after the attention core, fused in one Triton kernel (and one for its backward):

    y = silu(gate) * LayerNorm_V(o + sigmoid((q . (k * w)) v)),   k = 1 - e^g,  LayerNorm without affine

per token and head; o, v, gate: [B, T, H, V]; q, g: [B, T, H, K]; w: [H, K] (the self-augmentation weight);
q, v and gate may be views of wider token rows (chunk.token_rows), the rest is contiguous.
Unfused, this is a dozen elementwise passes over [B, T, H, V] in fp32 (LayerNorm runs in fp32 under autocast);
fused, it reads its inputs once and writes y in o's dtype.  The backward recomputes the forward from the inputs.
metala_kernels.metala_readout is the entry point; metala_kernels.chunk_torch.readout_torch the PyTorch path.
"""
import torch
import triton
import triton.language as tl

from .chunk import _key
from .dispatch import kernel_op

BLOCK_ROWS = 32


@triton.jit
def _rows(row0, n_rows, BM: tl.constexpr):
    rows = row0 + tl.arange(0, BM)
    return rows, rows < n_rows


@triton.jit
def _at(rows, h, D: tl.constexpr, STRIDE: tl.constexpr):
    """Offsets [BM, D] of head h's D values in token rows STRIDE apart."""
    return rows[:, None] * STRIDE + h * D + tl.arange(0, D)[None, :]


@triton.jit
def _normalised(o, q, g, v, w, at_v, at_k, at_q, at_vs, live, h, eps, K: tl.constexpr, V: tl.constexpr,
                HAS_AUG: tl.constexpr, BM: tl.constexpr):
    """For BM rows: n = LayerNorm(o + sigmoid(s v)) [BM, V] with s = q . (k * w), and what the backward needs:
    rstd [BM], s [BM], sigmoid(s v), v [BM, V], q, g, k [BM, K], w [K] (the augmentation terms 0 without HAS_AUG).
    at_v, at_k: offsets of o and g; at_q, at_vs: of q and v."""
    a = tl.load(o + at_v, mask=live[:, None], other=0.).to(tl.float32)
    if HAS_AUG:
        qk = tl.load(q + at_q, mask=live[:, None], other=0.).to(tl.float32)
        gk = tl.load(g + at_k, mask=live[:, None], other=0.).to(tl.float32)
        kk = _key(gk)
        wk = tl.load(w + h * K + tl.arange(0, K)).to(tl.float32)
        s = tl.sum(qk * kk * wk[None, :], axis=1)
        vv = tl.load(v + at_vs, mask=live[:, None], other=0.).to(tl.float32)
        sig = tl.sigmoid(s[:, None] * vv)
        a += sig
    else:
        qk = tl.zeros([BM, K], dtype=tl.float32)
        gk = tl.zeros([BM, K], dtype=tl.float32)
        kk = tl.zeros([BM, K], dtype=tl.float32)
        wk = tl.zeros([K], dtype=tl.float32)
        s = tl.zeros([BM], dtype=tl.float32)
        vv = tl.zeros([BM, V], dtype=tl.float32)
        sig = tl.zeros([BM, V], dtype=tl.float32)
    a -= (tl.sum(a, axis=1) / V)[:, None]
    rstd = tl.rsqrt(tl.sum(a * a, axis=1) / V + eps)
    return a * rstd[:, None], rstd, s, sig, vv, qk, gk, kk, wk


@triton.jit
def _readout_fwd_kernel(o, q, g, v, gate, w, y, n_rows, eps, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        HAS_AUG: tl.constexpr, BM: tl.constexpr, QS: tl.constexpr, VS: tl.constexpr,
                        GS: tl.constexpr):
    """Program (row block, head h): BM tokens of head h (q's, v's and gate's token rows QS, VS and GS apart)."""
    h = tl.program_id(1)
    rows, live = _rows(tl.program_id(0) * BM, n_rows, BM)
    at_v, at_k = _at(rows, h, V, H * V), _at(rows, h, K, H * K)
    n, _, _, _, _, _, _, _, _ = _normalised(o, q, g, v, w, at_v, at_k, _at(rows, h, K, QS), _at(rows, h, V, VS), live,
                                            h, eps, K, V, HAS_AUG, BM)
    z = tl.load(gate + _at(rows, h, V, GS), mask=live[:, None], other=0.).to(tl.float32)
    tl.store(y + at_v, (z * tl.sigmoid(z) * n).to(y.dtype.element_ty), mask=live[:, None])


@triton.jit
def _readout_bwd_kernel(o, q, g, v, gate, w, dy, do, dq, dg, dv, dgate, dw_part, n_rows, eps, H: tl.constexpr,
                        K: tl.constexpr, V: tl.constexpr, HAS_AUG: tl.constexpr, BM: tl.constexpr, QS: tl.constexpr,
                        VS: tl.constexpr, GS: tl.constexpr):
    """Gradients of BM tokens of head h (contiguous); dw_part[row block, h] = this block's share of dw[h]."""
    h = tl.program_id(1)
    rows, live = _rows(tl.program_id(0) * BM, n_rows, BM)
    at_v, at_k = _at(rows, h, V, H * V), _at(rows, h, K, H * K)
    n, rstd, s, sig, vv, qk, gk, kk, wk = _normalised(o, q, g, v, w, at_v, at_k, _at(rows, h, K, QS),
                                                      _at(rows, h, V, VS), live, h, eps, K, V, HAS_AUG, BM)
    z = tl.load(gate + _at(rows, h, V, GS), mask=live[:, None], other=0.).to(tl.float32)
    sz = tl.sigmoid(z)
    grad_y = tl.load(dy + at_v, mask=live[:, None], other=0.).to(tl.float32)
    tl.store(dgate + at_v, (grad_y * n * sz * (1 + z * (1 - sz))).to(dgate.dtype.element_ty), mask=live[:, None])
    dn = grad_y * z * sz
    da = rstd[:, None] * (dn - tl.sum(dn, axis=1)[:, None] / V - n * (tl.sum(dn * n, axis=1) / V)[:, None])
    tl.store(do + at_v, da.to(do.dtype.element_ty), mask=live[:, None])
    if HAS_AUG:
        dz = da * sig * (1 - sig)
        tl.store(dv + at_v, (dz * s[:, None]).to(dv.dtype.element_ty), mask=live[:, None])
        ds = tl.sum(dz * vv, axis=1)[:, None]
        tl.store(dq + at_k, (ds * kk * wk[None, :]).to(dq.dtype.element_ty), mask=live[:, None])
        # dk = ds q w and dk/dg = -e^g
        tl.store(dg + at_k, (-ds * qk * wk[None, :] * tl.exp(gk)).to(dg.dtype.element_ty), mask=live[:, None])
        tl.store(dw_part + (tl.program_id(0) * H + h) * K + tl.arange(0, K), tl.sum(ds * qk * kk, axis=0))


def _grid(n_rows, H):
    return triton.cdiv(n_rows, BLOCK_ROWS), H


def _readout_fwd(o: torch.Tensor, q: torch.Tensor, g: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                 w: torch.Tensor, eps: float, has_aug: bool) -> torch.Tensor:
    B, T, H, V = o.shape
    y = o.new_empty(o.shape)
    _readout_fwd_kernel[_grid(B * T, H)](o, q, g, v, gate, w, y, B * T, eps, H=H, K=q.shape[-1], V=V,
                                         HAS_AUG=has_aug, BM=BLOCK_ROWS, QS=q.stride(1), VS=v.stride(1),
                                         GS=gate.stride(1))
    return y


def _readout_bwd(o: torch.Tensor, q: torch.Tensor, g: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                 w: torch.Tensor, dy: torch.Tensor, eps: float, has_aug: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> do, dq, dg, dv, dgate, dw (dq, dg, dv, dw empty [0] without augmentation)."""
    B, T, H, V = o.shape
    grid = _grid(B * T, H)
    do, dgate = o.new_empty(o.shape), gate.new_empty(gate.shape)  # contiguous, as every gradient here
    if has_aug:
        dq, dg, dv = q.new_empty(q.shape), g.new_empty(g.shape), v.new_empty(v.shape)
        dw_part = torch.empty(grid[0], H, q.shape[-1], dtype=torch.float32, device=o.device)
    else:
        dq, dg, dv, dw_part = (o.new_empty(0) for _ in range(4))
    _readout_bwd_kernel[grid](o, q, g, v, gate, w, dy.contiguous(), do, dq, dg, dv, dgate, dw_part, B * T, eps,
                              H=H, K=q.shape[-1], V=V, HAS_AUG=has_aug, BM=BLOCK_ROWS, QS=q.stride(1),
                              VS=v.stride(1), GS=gate.stride(1))
    dw = dw_part.sum(0).to(w.dtype) if has_aug else o.new_empty(0)
    return do, dq, dg, dv, dgate, dw


def _readout_fwd_fake(o, q, g, v, gate, w, eps, has_aug):
    return o.new_empty(o.shape)


def _readout_bwd_fake(o, q, g, v, gate, w, dy, eps, has_aug):
    if not has_aug:
        return o.new_empty(o.shape), o.new_empty(0), o.new_empty(0), o.new_empty(0), gate.new_empty(gate.shape), \
            o.new_empty(0)
    return o.new_empty(o.shape), q.new_empty(q.shape), g.new_empty(g.shape), v.new_empty(v.shape), \
        gate.new_empty(gate.shape), torch.empty_like(w)


def _setup_context(ctx, inputs, output):
    o, q, g, v, gate, w, ctx.eps, ctx.has_aug = inputs
    ctx.save_for_backward(o, q, g, v, gate, w)


def _input_grads(ctx, dy, readout_bwd):
    o, q, g, v, gate, w = ctx.saved_tensors
    do, dq, dg, dv, dgate, dw = readout_bwd(o, q, g, v, gate, w, dy, ctx.eps, ctx.has_aug)
    if not ctx.has_aug:
        return do, None, None, None, dgate, None, None, None
    return do, dq, dg, dv, dgate, dw, None, None


readout = kernel_op('metala_kernels::readout', _readout_fwd, _readout_bwd, _readout_fwd_fake, _readout_bwd_fake,
                    _setup_context, _input_grads)
