"""Reference MetaLA attention: the token-by-token recurrence (the oracle) and the materialised T x T form.

Shapes: q, g: [B, T, H, K]; v: [B, T, H, V]; mask: [B, T] (True = real token); aug_weight: [H, K].
g = log(alpha) <= 0 and the key is k = 1 - exp(g).  Both functions compute in the dtype of their inputs
(tests pass float64) and return o: [B, T, H, V].
"""
import torch


def _prepare(q, g, v, g_bwd, mask):
    """Applies the key-padding mask to the gates: a pad has alpha = 1 and k = 0, so it neither writes nor decays."""
    g_bwd = g if g_bwd is None else g_bwd
    if mask is not None:
        pad = ~mask.bool()[:, :, None, None]
        g, g_bwd = g.masked_fill(pad, 0.0), g_bwd.masked_fill(pad, 0.0)
    return g, g_bwd


def _finish(o, q, g, v, scale, mask, aug_weight):
    """Scale, self-augmentation sigmoid((q . (k * w)) v) and zeroed pads."""
    o = o * scale
    if aug_weight is not None:
        k = -torch.expm1(g)
        o = o + torch.sigmoid((q * k * aug_weight).sum(-1, keepdim=True) * v)
    if mask is not None:
        o = o * mask.bool()[:, :, None, None]
    return o


def naive_recurrent_metala(q, g, v, *, causal=False, g_bwd=None, scale=None, mask=None, aug_weight=None):
    """S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t; the backward scan mirrors it (diagonal once)."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    g, g_bwd = _prepare(q, g, v, g_bwd, mask)
    k, k_bwd = -torch.expm1(g), -torch.expm1(g_bwd)
    o = torch.zeros_like(v)
    state = q.new_zeros(B, H, K, v.shape[-1])
    for t in range(T):
        state = g[:, t].exp()[..., None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = (q[:, t, :, :, None] * state).sum(-2)
    if not causal:
        state = torch.zeros_like(state)  # holds sum_{j>t} (alpha_{t+1}..alpha_{j-1}) k_j^T v_j
        for t in reversed(range(T)):
            decayed = g_bwd[:, t].exp()[..., None] * state
            o[:, t] += (q[:, t, :, :, None] * decayed).sum(-2)
            state = decayed + k_bwd[:, t, :, :, None] * v[:, t, :, None, :]
    return _finish(o, q, g, v, scale, mask, aug_weight)


def naive_parallel_metala(q, g, v, *, causal=False, g_bwd=None, scale=None, mask=None, aug_weight=None):
    """o_i = scale sum_j (q_i . (k_j * D_ij)) v_j with the decay D_ij materialised for every pair (i, j)."""
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    g, g_bwd = _prepare(q, g, v, g_bwd, mask)
    k, k_bwd = -torch.expm1(g), -torch.expm1(g_bwd)
    incl = g.cumsum(1)                        # sum_{s<=t} g_s
    excl = g_bwd.cumsum(1) - g_bwd            # sum_{s<t} g_bwd_s
    T = q.shape[1]
    i, j = torch.arange(T, device=q.device)[:, None], torch.arange(T, device=q.device)[None, :]
    # [B, T_i, T_j, H, K] log-decays; each branch is <= 0 where it is used
    fwd = (incl[:, :, None] - incl[:, None, :]).masked_fill(~(j <= i)[None, :, :, None, None], float('-inf'))
    bwd = (excl[:, None, :] - excl[:, :, None]).masked_fill(~(j > i)[None, :, :, None, None], float('-inf'))
    scores = torch.einsum('bihk,bjhk,bijhk->bhij', q, k, fwd.exp())
    if not causal:
        scores = scores + torch.einsum('bihk,bjhk,bijhk->bhij', q, k_bwd, bwd.exp())
    o = torch.einsum('bhij,bjhv->bihv', scores, v)
    return _finish(o, q, g, v, scale, mask, aug_weight)
