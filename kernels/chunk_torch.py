"""Chunked MetaLA attention in pure PyTorch: the CPU path, differentiable through autograd.

Within a chunk of C tokens the scores are one matrix product of q e^lam and k e^-lam where that is exact (the
chunk's decay at least e^-30), else the decays per pair (log-space, every exponent <= 0); across chunks
a forward state S [K, V] runs left to right and a backward state R [K, V] right to left, as in the Triton
kernels (chunk.py).  Shapes: q, g, g_bwd: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V].
"""
import torch
import torch.nn.functional as F


def _chunks(x, C):
    """[B, T, H, D] -> [B, H, N, C, D], zero-padded to N * C tokens (a zero gate is alpha = 1, k = 0: inert)."""
    B, T, H, D = x.shape
    x = F.pad(x, (0, 0, 0, 0, 0, -T % C))
    return x.view(B, -1, C, H, D).permute(0, 3, 1, 2, 4)


def key_from_gate(g):
    """k = 1 - e^g, accurate in value and gradient: -expm1 near g = 0 (where 1 - e^g cancels), 1 - e^g
    elsewhere (where autograd's expm1 backward, grad * (expm1(g) + 1), would round e^g away)."""
    return torch.where(g > -0.1, -torch.expm1(g), 1 - g.exp())


def self_augmentation(q, g, v, aug_weight):
    """MetaLA's self-augmentation sigmoid((q . (k * w)) v), k = 1 - e^g: q, g [B, T, H, K], v [B, T, H, V], w [H, K]
    -> [B, T, H, V] in v's dtype (the per-token weight [B, T, H, 1] summed in fp32 at least)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    weight = (q.to(acc) * key_from_gate(g.to(acc)) * aug_weight).sum(-1, keepdim=True)
    return torch.sigmoid(weight.to(v.dtype) * v)


def readout_torch(o, q, g, v, gate, aug_weight=None, eps=1e-5):
    """silu(gate) * LayerNorm_V(o + self-augmentation) in PyTorch: o, v, gate [B, T, H, V]; q, g [B, T, H, K]."""
    if aug_weight is not None:
        o = o + self_augmentation(q, g, v, aug_weight)
    return F.silu(gate) * F.layer_norm(o, o.shape[-1:], eps=eps)


def _exclusive_cumsum(x, reverse=False):
    """Sum over the tokens strictly before (after, if reverse) each token of the chunk: [..., C, K].  Built by
    shifting, not as cumsum - x, so a token's own gate never enters and leaves it (inexactly, in autograd)."""
    if reverse:
        return F.pad(x.flip(-2).cumsum(-2)[..., :-1, :], (0, 0, 1, 0)).flip(-2)
    return F.pad(x.cumsum(-2)[..., :-1, :], (0, 0, 1, 0))


def _intra_chunk_scores(q, k, lam, seen, max_span=30.0):
    """A [B, H, N, C, C] with A_ij = sum_k q_ik k_jk exp(lam_ik - lam_jk) where seen [C, C] holds, else 0; q, k, lam:
    [B, H, N, C, K].  One product of q e^lam and k e^-lam in the chunks whose lam spans at most max_span (factors
    below e^30: exact in fp32); the pair decays [C, C, K] materialised in the others (alpha near 0), and everywhere
    under torch.compile (no data-dependent branch there)."""
    def exact(q, k, lam):
        decay = (lam[..., :, None, :] - lam[..., None, :, :]).masked_fill(~seen[..., None], float('-inf')).exp()
        return torch.einsum('...ik,...jk,...ijk->...ij', q, k, decay)

    if torch.compiler.is_compiling():
        return exact(q, k, lam)
    fast = (lam.amax(-2) - lam.amin(-2)).amax(-1) <= max_span           # [B, H, N]
    lam_fast = torch.where(fast[..., None, None], lam, 0.)                # finite factors where replaced below
    scores = ((q * lam_fast.exp()) @ (k * (-lam_fast).exp()).transpose(-1, -2)).masked_fill(~seen, 0.)
    if not bool(fast.all()):
        slow = ~fast
        scores = scores.index_put((slow,), exact(q[slow], k[slow], lam[slow]))
    return scores


def _scan(decay, update, reverse=False):
    """States entering each chunk: s_0 = 0, s_{n+1} = decay_n * s_n + update_n (chunks taken right to left if
    reverse).  decay: [B, H, N, K]; update: [B, H, N, K, V] -> [B, H, N, K, V]."""
    # unbind, not update[:, :, n]: the backward of each such slice would allocate a full-size gradient (O(N^2))
    decays, updates = decay.unbind(2), update.unbind(2)
    N = len(decays)
    order = range(N - 1, -1, -1) if reverse else range(N)
    state, states = torch.zeros_like(updates[0]), [None] * N
    for n in order:
        states[n] = state
        state = decays[n][..., None] * state + updates[n]
    return torch.stack(states, 2)


def chunk_metala_torch(q, g, v, g_bwd=None, scale=1.0, causal=False, chunk_size=16):
    """o_i = scale * sum_j (q_i . (k_j * D_ij)) v_j, computed chunk by chunk in float32 (or float64)."""
    dtype, T, C = v.dtype, q.shape[1], chunk_size
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q, g, v = (_chunks(x.to(acc), C) for x in (q, g, v))
    k = key_from_gate(g)
    incl = g.cumsum(-2)                                       # sum of g up to and including token i of the chunk
    total = incl[..., -1, :]                                  # [B, H, N, K]
    after = _exclusive_cumsum(g, reverse=True)                # sum of g after token i: total - incl
    i, j = torch.arange(C, device=q.device)[:, None], torch.arange(C, device=q.device)[None, :]
    # the diagonal (decay 1) apart: through exp(incl_i - incl_i) its gate gradient would cancel inexactly
    scores = _intra_chunk_scores(q, k, incl, j < i) + torch.diag_embed((q * k).sum(-1))
    states = _scan(total.exp(), (k * after.exp()).transpose(-1, -2) @ v)
    o = scores @ v + (q * incl.exp()) @ states
    if not causal:
        gb = g if g_bwd is None else _chunks(g_bwd.to(acc), C)
        kb = k if g_bwd is None else key_from_gate(gb)
        excl = _exclusive_cumsum(gb)                          # sum of g_bwd strictly before token i of the chunk
        rest = _exclusive_cumsum(gb, reverse=True) + gb       # sum of g_bwd from token i on: total_b - excl
        total_b = rest[..., 0, :]
        scores_b = _intra_chunk_scores(q, kb, -excl, j > i)                # decay exp(excl_j - excl_i), j > i
        states_b = _scan(total_b.exp(), (kb * excl.exp()).transpose(-1, -2) @ v, reverse=True)
        o = o + scores_b @ v + (q * rest.exp()) @ states_b
    B, H, N = o.shape[:3]
    o = (o * scale).permute(0, 2, 3, 1, 4).reshape(B, N * C, H, -1)[:, :T]
    return o.to(dtype)
