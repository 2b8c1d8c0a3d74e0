"""Chunked MetaLA attention in Triton: bidirectional (and causal) forward and backward kernels.

Chunk-parallel: a states kernel stores the state entering every chunk of BT tokens of every scan (S left to
right, R right to left; and their gradients dS, dR for the backward), then one program per (chunk, batch, head)
computes that chunk's outputs or gradients from them.  On long sequences with few (batch, head) pairs the states
kernel computes every chunk's own term in parallel and a combine kernel scans them into the entering states.  On
short sequences at small batch (RECOMPUTE) there is no states kernel: each program computes the states around its
chunk from the other chunks, fewer launches for more work on the GPU.  (A fused variant, one program per (batch,
head) running over all chunks, was slower at every shape timed on an H200: benchmarks/ops.md.)

A scan direction is described by a log-decay lam [BT, K] over the chunk: the decay between a query i and a
key j it sees is exp(lam_i - lam_j) <= 1, per channel.  Forward: lam = inclusive cumsum of g, keys j <= i.
Backward: lam = -(exclusive cumsum of g_bwd), keys j > i.  Within a chunk the scores are one matrix
product of q * e^lam and k * e^-lam when the chunk's total decay is at least e^-30 (e^-10 with fp16 inputs: the
factors, up to 1 / decay, must fit the input dtype; exact, no overflow); when the chunk decays further (alpha near 0)
a per-key loop computes every pair's decay with exponents <= 0 (_one_product decides).  Where the states are stored,
step 2 runs in two launches: one without that loop, which lists the chunks that need it, and one with it over that
list (_step2_launches).
k = 1 - exp(g) is computed here: the kernels read only q, g, v (and do).
"""
import functools
import operator
import os

import torch
import triton
import triton.language as tl

from .dispatch import kernel_op

INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'
# Smallest chunk decay (per channel) for which the factorised chunk product is used: e^-30, so its factors
# stay below e^30 ~ 1e13, far inside the fp32/bf16 range; with fp16 factors e^-10 (below 22,027: fp16 ends at 65,504).
MIN_CHUNK_DECAY = tl.constexpr(9.357623e-14)
MIN_CHUNK_DECAY_FP16 = tl.constexpr(4.539993e-05)


@triton.jit
def _load_chunk(ptr, t0, T, D: tl.constexpr, STRIDE_T: tl.constexpr, BT: tl.constexpr):
    """Tile [BT, D] of the tokens t0 .. t0 + BT (zeros past T: a zero gate is alpha = 1, k = 0)."""
    rows = t0 + tl.arange(0, BT)
    return tl.load(ptr + rows[:, None] * STRIDE_T + tl.arange(0, D)[None, :], mask=(rows < T)[:, None], other=0.)


@triton.jit
def _store_chunk(ptr, x, t0, T, D: tl.constexpr, STRIDE_T: tl.constexpr, BT: tl.constexpr):
    rows = t0 + tl.arange(0, BT)
    tl.store(ptr + rows[:, None] * STRIDE_T + tl.arange(0, D)[None, :], x.to(ptr.dtype.element_ty),
             mask=(rows < T)[:, None])


@triton.jit
def _head(ptr, i_bh, T, H: tl.constexpr, D: tl.constexpr, STRIDE_T: tl.constexpr):
    """ptr at token 0 of (batch, head) i_bh of [B, T, H, D] whose tokens are STRIDE_T apart (H * D: contiguous;
    more: a view of a wider [B, T, C] row, as a split in-projection gives)."""
    return ptr + ((i_bh // H).to(tl.int64) * T * STRIDE_T + (i_bh % H) * D)


@triton.jit
def _load_gates(g, gb, t0, T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BIDIR: tl.constexpr,
                SEP_GB: tl.constexpr):
    """g and g_bwd of the chunk at t0, fp32 [BT, K] (g_bwd is g unless SEP_GB)."""
    gc = _load_chunk(g, t0, T, K, H * K, BT).to(tl.float32)
    if BIDIR and SEP_GB:
        gbc = _load_chunk(gb, t0, T, K, H * K, BT).to(tl.float32)
    else:
        gbc = gc
    return gc, gbc


@triton.jit
def _key(g):
    """k = 1 - e^g = -expm1(g), by its Taylor series near 0 where 1 - e^g would cancel to nothing."""
    return tl.where(g > -0.1, -g * (1 + g * (1 / 2 + g * (1 / 6 + g * (1 / 24 + g / 120)))), 1 - tl.exp(g))


@triton.jit
def _forward_scan_gates(g):
    """g [BT, K] -> (k, lam, query factor e^lam, key factor e^(total - lam), chunk decay e^total [K])."""
    lam = tl.cumsum(g, axis=0)
    total = tl.sum(g, axis=0)
    return _key(g), lam, tl.exp(lam), tl.exp(total[None, :] - lam), tl.exp(total)


@triton.jit
def _backward_scan_gates(g):
    """Backward scan: decay alpha_i .. alpha_{j-1}; lam = -(exclusive cumsum), same tuple as above."""
    excl = tl.cumsum(g, axis=0) - g
    total = tl.sum(g, axis=0)
    return _key(g), -excl, tl.exp(total[None, :] - excl), tl.exp(excl), tl.exp(total)


@triton.jit
def _one_product(decay, DT: tl.constexpr, PATHS: tl.constexpr):
    """Whether a scan's scores within a chunk whose decay is decay [K] are one product of DT factors (up to
    1 / decay: they must fit DT), or need the per-key path.  Always in a launch of PATHS 'fast'
    (_step2_launches)."""
    if PATHS == 'fast':
        return True
    if DT == tl.float16:
        return tl.min(decay) >= MIN_CHUNK_DECAY_FP16
    return tl.min(decay) >= MIN_CHUNK_DECAY


@triton.jit
def _takes(slow, gc, gbc, chunk_id, BIDIR: tl.constexpr, PATHS: tl.constexpr, DT: tl.constexpr):
    """Whether a launch of step 2 computes the chunk of gates gc, gbc [BT, K].  A launch of PATHS 'fast' (no per-key
    path compiled) leaves a chunk with a scan that decays past what one product holds (_one_product), or with NaN
    gates, and appends its chunk_id to the list at slow for the 'slow' launch; the others compute what they get."""
    if PATHS != 'fast':
        return True
    fast = _one_product(tl.exp(tl.sum(gc, axis=0)), DT, 'both')
    if BIDIR:
        fast = fast & _one_product(tl.exp(tl.sum(gbc, axis=0)), DT, 'both')
    if ~fast:
        tl.store(slow + 1 + tl.atomic_add(slow, 1), chunk_id)
    return fast


@triton.jit
def _pick(x, sel):
    """Row sel (a [BT] one-hot mask) of x [BT, D] as a [D] vector."""
    return tl.sum(tl.where(sel[:, None], x, 0.), axis=0)


@triton.jit
def _pair_log_decay(g, j, REVERSE: tl.constexpr, BT: tl.constexpr):
    """[BT, K] log-decays between each token i and the key j, summed from the gates between them (not as a
    difference of two long cumsums, which would lose |cumsum| * 6e-8): sum_{j<s<=i} g_s, or with REVERSE
    sum_{i<=s<j} g_s.  Entries a direction does not see hold partial sums that the caller masks."""
    rows = tl.arange(0, BT)
    if REVERSE:
        return tl.cumsum(tl.where(rows[:, None] < j, g, 0.), axis=0, reverse=True)
    return tl.cumsum(tl.where(rows[:, None] > j, g, 0.), axis=0)


@triton.jit
def _scores(q, k, g, lam, seen, fast, REVERSE: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr,
            PREC: tl.constexpr):
    """A [BT, BT] with A_ij = sum_k q_ik k_jk exp(lam_ik - lam_jk) where seen[i, j], else 0."""
    if fast:
        a = tl.dot((q * tl.exp(lam)).to(DT), tl.trans((k * tl.exp(-lam)).to(DT)), input_precision=PREC)
        a = tl.where(seen, a, 0.)
    else:
        rows = tl.arange(0, BT)
        a = tl.zeros([BT, BT], dtype=tl.float32)
        for j in range(BT):
            sel = rows == j
            decay = tl.exp(tl.minimum(_pair_log_decay(g, j, REVERSE, BT), 0.))
            col = tl.sum(q * _pick(k, sel)[None, :] * decay, axis=1)
            a = tl.where(seen & sel[None, :], col[:, None], a)
    return a


@triton.jit
def _scores_grad(q, k, g, lam, da, seen, fast, REVERSE: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr,
                 PREC: tl.constexpr):
    """(dq, dk) [BT, K] of sum_ij da_ij A_ij for A = _scores(q, k, g, lam, seen)."""
    da = tl.where(seen, da, 0.)
    if fast:
        dq = tl.exp(lam) * tl.dot(da.to(DT), (k * tl.exp(-lam)).to(DT), input_precision=PREC)
        dk = tl.exp(-lam) * tl.dot(tl.trans(da).to(DT), (q * tl.exp(lam)).to(DT), input_precision=PREC)
    else:
        rows = tl.arange(0, BT)
        dq = tl.zeros_like(q)
        dk = tl.zeros_like(k)
        for j in range(BT):
            sel = rows == j
            w = tl.sum(tl.where(sel[None, :], da, 0.), axis=1)[:, None] \
                * tl.exp(tl.minimum(_pair_log_decay(g, j, REVERSE, BT), 0.))
            dq += w * _pick(k, sel)[None, :]
            dk = tl.where(sel[:, None], tl.sum(w * q, axis=0)[None, :], dk)
    return dq, dk


@triton.jit
def _query_grad(qc, k, g, lam, qf, da, doc, state, seen, fast, REVERSE: tl.constexpr, BT: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr):
    """dq [BT, K] of one scan over a chunk: its pairs within the chunk (seen) and the state entering it."""
    dq, _ = _scores_grad(qc, k, g, lam, da, seen, fast, REVERSE, BT, DT, PREC)
    return dq + qf * tl.dot(doc, tl.trans(state.to(DT)), input_precision=PREC)


@triton.jit
def _key_grad(qc, k, g, lam, kf, da, vc, dstate, seen, fast, REVERSE: tl.constexpr, BT: tl.constexpr,
              DT: tl.constexpr, PREC: tl.constexpr):
    """dk [BT, K] of one scan over a chunk: its pairs within the chunk (seen; the diagonal is left to the caller) and
    the gradient dstate of the state leaving it.  (dv, from both scans' scores at once, is the caller's.)"""
    _, dk = _scores_grad(qc, k, g, lam, da, seen, fast, REVERSE, BT, DT, PREC)
    return dk + kf * tl.dot(vc, tl.trans(dstate.to(DT)), input_precision=PREC)


@triton.jit
def _gate_grad_terms(qc, k, g, dq, dk, dk_diag, later):
    """One scan's gate gradient as dg_s = sum_{t >= s} dlam_t + rest_s (forward scan) or -sum_{t >= s} dlam_t + dlam_s +
    rest_s (backward scan), with dlam = q dq - k dk: (dlam, rest = later - e^g (dk + dk_diag)) [BT, K], later [K]
    the sum of dlam over the chunks after this one (backward scan: minus that sum), dk_diag the diagonal's q dA_ss."""
    return qc * dq - k * dk, later[None, :] - tl.exp(g) * (dk + dk_diag)


@triton.jit
def _chunk_output(qc, gc, gbc, vc, s, r, BIDIR: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr,
                  PREC: tl.constexpr, PATHS: tl.constexpr):
    """One chunk's output before the scale, [BT, V]: intra-chunk scores @ v + (q e^lam) S + (q e^lam_b) R, from
    the chunk's q, g, g_bwd (fp32), v and the states entering it (S from the left, R from the right, [K, V]: fp32
    when recomputed or combined, v's dtype when carried, read in v's dtype either way; R unused when causal)."""
    rows = tl.arange(0, BT)
    k, lam, qf, kf, decay = _forward_scan_gates(gc)
    fast = _one_product(decay, DT, PATHS)
    acc = tl.dot((qc * qf).to(DT), s.to(DT), input_precision=PREC)
    if BIDIR:
        kb, lam_b, qf_b, kf_b, decay_b = _backward_scan_gates(gbc)
        fast = fast & _one_product(decay_b, DT, PATHS)
        a = _scores(qc, k, gc, lam, rows[:, None] >= rows[None, :], fast, False, BT, DT, PREC) \
            + _scores(qc, kb, gbc, lam_b, rows[:, None] < rows[None, :], fast, True, BT, DT, PREC)
        acc += tl.dot((qc * qf_b).to(DT), r.to(DT), input_precision=PREC)
    else:
        a = _scores(qc, k, gc, lam, rows[:, None] >= rows[None, :], fast, False, BT, DT, PREC)
    return acc + tl.dot(a.to(DT), vc, input_precision=PREC)


@triton.jit
def _chunk_term(x, g, y, t0, T, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                REVERSE: tl.constexpr, X_IS_Q: tl.constexpr, PREC: tl.constexpr, XS: tl.constexpr, YS: tl.constexpr):
    """The chunk at t0's own term of a scan's state, (x f)^T y [K, V] fp32, and the chunk's decay e^total [K]
    (x's and y's tokens XS and YS apart)."""
    gc = _load_chunk(g, t0, T, K, H * K, BT).to(tl.float32)
    if REVERSE != X_IS_Q:  # R (values right to left) and dR (gradients left to right): backward-scan gates
        k, lam, qf, kf, decay = _backward_scan_gates(gc)
    else:
        k, lam, qf, kf, decay = _forward_scan_gates(gc)
    DT = y.dtype.element_ty
    if X_IS_Q:
        xf = _load_chunk(x, t0, T, K, XS, BT).to(tl.float32) * qf
        yc = (_load_chunk(y, t0, T, V, YS, BT) * scale).to(DT)
    else:
        xf = k * kf
        yc = _load_chunk(y, t0, T, V, YS, BT)
    return tl.dot(tl.trans(xf.to(DT)), yc, input_precision=PREC), decay


@triton.jit
def _state_over(x, g, y, first, count, T, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, REVERSE: tl.constexpr, X_IS_Q: tl.constexpr, PREC: tl.constexpr,
                XS: tl.constexpr, YS: tl.constexpr):
    """The fp32 state [K, V] of a scan (as in _metala_states_kernel) after it passes `count` chunks from chunk
    `first` on (REVERSE: leftwards), starting from zero: the state entering the chunk after them."""
    s = tl.zeros([K, V], dtype=tl.float32)
    for i in range(count):
        if REVERSE:
            n = first - i
        else:
            n = first + i
        term, decay = _chunk_term(x, g, y, n * BT, T, scale, H, K, V, BT, REVERSE, X_IS_Q, PREC, XS, YS)
        s = decay[:, None] * s + term
    return s


@triton.jit
def _scan_states(x, g, y, states, decays, n, NT, T, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 BT: tl.constexpr, REVERSE: tl.constexpr, X_IS_Q: tl.constexpr, CARRY: tl.constexpr,
                 PREC: tl.constexpr, XS: tl.constexpr, YS: tl.constexpr):
    """One scan's part of _metala_states_kernel (x, g, y at its (batch, head); states [N, K, V] and decays [N, K]
    its slot): CARRY, the state entering every chunk but the first scanned (zero there: step 2 does not read it),
    scanning left to right or (REVERSE) right to left, so the last chunk scanned is never loaded; otherwise chunk
    n's own term and decay."""
    offs = tl.arange(0, K)[:, None] * V + tl.arange(0, V)[None, :]
    if CARRY:
        s = tl.zeros([K, V], dtype=tl.float32)
        for i in range(NT - 1):
            if REVERSE:
                n, entered = NT - 1 - i, NT - 2 - i
            else:
                n, entered = i, i + 1
            term, decay = _chunk_term(x, g, y, n * BT, T, scale, H, K, V, BT, REVERSE, X_IS_Q, PREC, XS, YS)
            s = decay[:, None] * s + term
            tl.store(states + entered * K * V + offs, s.to(states.dtype.element_ty))
    else:
        term, decay = _chunk_term(x, g, y, n * BT, T, scale, H, K, V, BT, REVERSE, X_IS_Q, PREC, XS, YS)
        tl.store(states + n * K * V + offs, term)
        tl.store(decays + n * K + tl.arange(0, K), decay)


@triton.jit
def _metala_states_kernel(q, g, gb, v, do, states, decays, slow, T, scale,
                          H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                          BIDIR: tl.constexpr, X_IS_Q: tl.constexpr, DIRS: tl.constexpr, FIRST: tl.constexpr,
                          CARRY: tl.constexpr, PREC: tl.constexpr, QS: tl.constexpr, VS: tl.constexpr):
    """Step 1, a scan and (BIDIR) its mirror in one launch: the state [K, V] entering every chunk n, at states
    [B*H, DIRS, N, K, V] in slot FIRST (and, BIDIR, FIRST + DIRS / 2): the sum over the chunks already passed of
    (x f)^T y, decayed by the chunks in between; zero entering the first chunk scanned, which CARRY leaves unstored
    and step 2 does not read.
    - values: S (left to right, gates g) and R (right to left, gates gb): x f = k e^(total - lam), k = 1 - e^g, y = v;
    - gradients (X_IS_Q, the backward's): dS (right to left, gates g) and dR (left to right, gates gb): x f = q e^lam,
      y = scale * do.
    The slots are S, R (forward) or S, dS, R, dR (backward: values FIRST 0, gradients FIRST 1).
    CARRY: one program per (scan, batch, head), grid (scans, B*H), runs over its chunks carrying the state (in fp32;
    stored in the dtype of states, which step 2's products read: see _states_dtype).  Otherwise one program per
    (chunk, scan, batch, head), grid (N scans, B*H), stores its chunk's own term there and its decay [K] at decays
    [B*H, DIRS, N, K]; _metala_combine_kernel then makes them the entering states.  (Many (batch, head) pairs fill
    the GPU with the first; few, on long sequences, leave it idle but for N sequential steps, which the second
    splits.)  Program (0, 0) also empties step 2's list at slow (its count; see _step2_launches), which would take a
    launch of its own."""
    i_bh = tl.program_id(1)
    if (tl.program_id(0) == 0) & (i_bh == 0):
        tl.store(slow, 0)
    SCANS: tl.constexpr = 2 if BIDIR else 1
    mirror = tl.program_id(0) % SCANS  # 1: R or dR
    n = tl.program_id(0) // SCANS  # the chunk, without CARRY
    q, v, do = _head(q, i_bh, T, H, K, QS), _head(v, i_bh, T, H, V, VS), _head(do, i_bh, T, H, V, H * V)
    g, gb = _head(g, i_bh, T, H, K, H * K), _head(gb, i_bh, T, H, K, H * K)
    NT = tl.cdiv(T, BT)
    slot = FIRST + mirror * (DIRS // SCANS)
    states += (i_bh.to(tl.int64) * DIRS + slot) * NT * K * V
    decays += (i_bh.to(tl.int64) * DIRS + slot) * NT * K
    if X_IS_Q:
        y, YS = do, H * V
    else:
        y, YS = v, VS
    if mirror == 0:  # S, dS
        _scan_states(q, g, y, states, decays, n, NT, T, scale, H, K, V, BT, X_IS_Q, X_IS_Q, CARRY, PREC, QS, YS)
    else:  # R, dR
        _scan_states(q, gb, y, states, decays, n, NT, T, scale, H, K, V, BT, not X_IS_Q, X_IS_Q, CARRY, PREC, QS, YS)


@triton.jit
def _then(decay_a, term_a, decay_b, term_b):
    """Two chunks' state updates s -> decay s + term in a row, as one."""
    return decay_a * decay_b, term_a * decay_b + term_b


@triton.jit
def _metala_combine_kernel(states, decays, NT, K: tl.constexpr, V: tl.constexpr, DIRS: tl.constexpr,
                           REVERSED: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    """Step 1 without CARRY, in place: the chunks' own terms in states [B*H, DIRS, N, K, V] become the states
    entering them, S_n = sum over the chunks m passed before n of term_m decayed by the chunks in between, from the
    decays [B*H, DIRS, N, K].  Grid (cdiv(K V, BLOCK), B*H*DIRS); direction d walks right to left where bit d of
    REVERSED is set.  Each program carries BLOCK entries of the state through the chunks, CHUNKS at a time: one
    load of their terms and decays, a scan of their updates s -> decay s + term, one store."""
    i_e = tl.program_id(0)
    i_bhd = tl.program_id(1)
    reverse = (REVERSED >> (i_bhd % DIRS)) & 1
    e = i_e * BLOCK + tl.arange(0, BLOCK)
    in_state = e < K * V
    states += i_bhd.to(tl.int64) * NT * K * V + e
    decays += i_bhd.to(tl.int64) * NT * K + e // V
    rows = tl.arange(0, CHUNKS)
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, NT, CHUNKS):
        c = c0 + rows  # scan positions; chunk index n = c, or NT - 1 - c right to left
        n = c + reverse * (NT - 1 - 2 * c)
        here = (c < NT)[:, None] & in_state[None, :]
        term = tl.load(states + n[:, None] * K * V, mask=here, other=0.)
        decay = tl.load(decays + n[:, None] * K, mask=here, other=1.)
        decay, term = tl.associative_scan((decay, term), 0, _then)
        after = decay * carry[None, :] + term  # the state after each chunk = the state entering the next
        n0 = c0 + reverse * (NT - 1 - 2 * c0)
        tl.store(states + n0 * K * V, carry, mask=in_state)
        n_next = n + 1 - 2 * reverse
        inside = (c + 1 < tl.minimum(c0 + CHUNKS, NT))[:, None]  # the last row's state is the next tile's carry
        tl.store(states + n_next[:, None] * K * V, after, mask=here & inside)
        carry = tl.sum(tl.where((rows == CHUNKS - 1)[:, None], after, 0.), axis=0)


@triton.jit
def _out_chunk(q, g, gb, v, o, states, slow, n, i_bh, T, scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BIDIR: tl.constexpr,
               SEP_GB: tl.constexpr, RECOMPUTE: tl.constexpr, PREC: tl.constexpr, QS: tl.constexpr, VS: tl.constexpr,
               PATHS: tl.constexpr):
    """The outputs of chunk n of (batch, head) i_bh, or (PATHS 'fast', a chunk that needs the per-key path) its id
    i_bh N + n appended to the list at slow (see _metala_out_kernel)."""
    q, v = _head(q, i_bh, T, H, K, QS), _head(v, i_bh, T, H, V, VS)
    g, gb, o = _head(g, i_bh, T, H, K, H * K), _head(gb, i_bh, T, H, K, H * K), _head(o, i_bh, T, H, V, H * V)
    NT = tl.cdiv(T, BT)
    DIRS: tl.constexpr = 2 if BIDIR else 1
    states += (i_bh.to(tl.int64) * DIRS * NT + n) * K * V
    state_offs = tl.arange(0, K)[:, None] * V + tl.arange(0, V)[None, :]
    DT = v.dtype.element_ty
    t0 = n * BT
    gc, gbc = _load_gates(g, gb, t0, T, H, K, BT, BIDIR, SEP_GB)
    if _takes(slow, gc, gbc, i_bh * NT + n, BIDIR, PATHS, DT):
        qc, vc = _load_chunk(q, t0, T, K, QS, BT).to(tl.float32), _load_chunk(v, t0, T, V, VS, BT)
        if RECOMPUTE:
            s = _state_over(q, g, v, 0, n, T, scale, H, K, V, BT, False, False, PREC, QS, VS)
        else:  # none stored entering the first chunk (S) or the last (R): zero
            s = tl.load(states + state_offs, mask=(state_offs >= 0) & (n > 0), other=0.)
        if not BIDIR:
            r = s
        elif RECOMPUTE:
            r = _state_over(q, gb, v, NT - 1, NT - 1 - n, T, scale, H, K, V, BT, True, False, PREC, QS, VS)
        else:
            r = tl.load(states + NT * K * V + state_offs, mask=(state_offs >= 0) & (n + 1 < NT), other=0.)
        acc = _chunk_output(qc, gc, gbc, vc, s, r, BIDIR, BT, DT, PREC, PATHS)
        _store_chunk(o, acc * scale, t0, T, V, H * V, BT)


@triton.jit
def _metala_out_kernel(q, g, gb, v, o, states, slow, T, scale,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BIDIR: tl.constexpr, SEP_GB: tl.constexpr, RECOMPUTE: tl.constexpr, PREC: tl.constexpr,
                       QS: tl.constexpr, VS: tl.constexpr, PATHS: tl.constexpr):
    """Step 2 of the forward: each chunk's outputs from the states entering it, states [B*H, 1 + BIDIR, N, K, V]
    (S, then R); with RECOMPUTE (few chunks) each program computes them from the other chunks instead, and there
    is no step 1.  PATHS (_step2_launches): 'both', one program per (chunk, batch, head), grid (N, B*H); 'fast', the
    same compiled without the per-key path, listing the chunks that need it at slow (int32: count, then ids);
    'slow', grid (P,), P programs over that list."""
    if PATHS == 'slow':
        NT = tl.cdiv(T, BT)
        for i in range(tl.program_id(0), tl.load(slow), tl.num_programs(0)):
            chunk = tl.load(slow + 1 + i)
            _out_chunk(q, g, gb, v, o, states, slow, chunk % NT, chunk // NT, T, scale, H, K, V, BT, BIDIR, SEP_GB,
                       RECOMPUTE, PREC, QS, VS, PATHS)
    else:
        _out_chunk(q, g, gb, v, o, states, slow, tl.program_id(0), tl.program_id(1), T, scale, H, K, V, BT, BIDIR,
                   SEP_GB, RECOMPUTE, PREC, QS, VS, PATHS)


@triton.jit
def _grad_chunk(q, g, gb, v, do, dq, dg, dgb, dv, states, slow, n, i_bh, T, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BIDIR: tl.constexpr,
                SEP_GB: tl.constexpr, RECOMPUTE: tl.constexpr, PREC: tl.constexpr, QS: tl.constexpr,
                VS: tl.constexpr, PATHS: tl.constexpr):
    """The gradients of chunk n of (batch, head) i_bh, or (PATHS 'fast', a chunk that needs the per-key path) its
    id appended to the list at slow (see _metala_bwd_kernel and _metala_out_kernel).

    The gate gradient of a token sums dlam = q dq - k dk over every later token of the sequence.  The part from
    later chunks equals the pairs that cross the chunk's right edge, sum_v S_{n+1} dS_n (forward scan) and
    sum_v R_n dR_{n+1} (backward scan), so no pass over the other chunks is needed."""
    q, v = _head(q, i_bh, T, H, K, QS), _head(v, i_bh, T, H, V, VS)
    g, gb = _head(g, i_bh, T, H, K, H * K), _head(gb, i_bh, T, H, K, H * K)
    dq, dg, dgb = _head(dq, i_bh, T, H, K, H * K), _head(dg, i_bh, T, H, K, H * K), _head(dgb, i_bh, T, H, K, H * K)
    do, dv = _head(do, i_bh, T, H, V, H * V), _head(dv, i_bh, T, H, V, H * V)
    NT = tl.cdiv(T, BT)
    DIRS: tl.constexpr = 4 if BIDIR else 2
    states += i_bh.to(tl.int64) * DIRS * NT * K * V
    offs = tl.arange(0, K)[:, None] * V + tl.arange(0, V)[None, :]
    has_next = (offs >= 0) & (n + 1 < NT)  # the state entering the next chunk; none after the last
    has_prev = (offs >= 0) & (n > 0)  # states stored entering chunk n: S and dR from the left, dS and R from the right
    rows = tl.arange(0, BT)
    fwd_seen = rows[:, None] >= rows[None, :]
    DT = v.dtype.element_ty
    t0 = n * BT

    gc, gbc = _load_gates(g, gb, t0, T, H, K, BT, BIDIR, SEP_GB)
    if _takes(slow, gc, gbc, i_bh * NT + n, BIDIR, PATHS, DT):
        qc, vc = _load_chunk(q, t0, T, K, QS, BT).to(tl.float32), _load_chunk(v, t0, T, V, VS, BT)
        doc = (_load_chunk(do, t0, T, V, H * V, BT) * scale).to(DT)
        da = tl.dot(doc, tl.trans(vc), input_precision=PREC)
        diag = tl.sum(doc.to(tl.float32) * vc.to(tl.float32), axis=1)[:, None]  # dA_ii

        if RECOMPUTE:
            s = _state_over(q, g, v, 0, n, T, scale, H, K, V, BT, False, False, PREC, QS, VS)
            ds = _state_over(q, g, do, NT - 1, NT - 1 - n, T, scale, H, K, V, BT, True, True, PREC, QS, H * V)
        else:
            s = tl.load(states + n * K * V + offs, mask=has_prev, other=0.)
            ds = tl.load(states + (NT + n) * K * V + offs, mask=has_next, other=0.)
        k, lam, qf, kf, decay = _forward_scan_gates(gc)
        if RECOMPUTE:  # the state after this chunk: one more step of the scan
            s_next = decay[:, None] * s + tl.dot(tl.trans((k * kf).to(DT)), vc, input_precision=PREC)
            s_next = tl.where(has_next, s_next, 0.)
        else:
            s_next = tl.load(states + (n + 1) * K * V + offs, mask=has_next, other=0.)
        fast = _one_product(decay, DT, PATHS)
        fwd_seen_off_diag = rows[:, None] > rows[None, :]
        dq_f = _query_grad(qc, k, gc, lam, qf, da, doc, s, fwd_seen_off_diag, fast, False, BT, DT, PREC)
        dk_f = _key_grad(qc, k, gc, lam, kf, da, vc, ds, fwd_seen_off_diag, fast, False, BT, DT, PREC)
        dv_t = tl.dot((k * kf).to(DT), ds.to(DT), input_precision=PREC)
        dlam, rest = _gate_grad_terms(qc, k, gc, dq_f, dk_f, qc * diag,
                                      tl.sum(s_next.to(tl.float32) * ds.to(tl.float32), axis=1))
        dq_t = dq_f + k * diag
        if BIDIR:
            kb, lam_b, qf_b, kf_b, decay_b = _backward_scan_gates(gbc)
            if RECOMPUTE:
                r = _state_over(q, gb, v, NT - 1, NT - 1 - n, T, scale, H, K, V, BT, True, False, PREC, QS, VS)
                dr = _state_over(q, gb, do, 0, n, T, scale, H, K, V, BT, False, True, PREC, QS, H * V)
                dr_next = decay_b[:, None] * dr + tl.dot(tl.trans((qc * qf_b).to(DT)), doc, input_precision=PREC)
                dr_next = tl.where(has_next, dr_next, 0.)
            else:
                r = tl.load(states + (2 * NT + n) * K * V + offs, mask=has_next, other=0.)
                dr = tl.load(states + (3 * NT + n) * K * V + offs, mask=has_prev, other=0.)
                dr_next = tl.load(states + (3 * NT + n + 1) * K * V + offs, mask=has_next, other=0.)
            fast_b = _one_product(decay_b, DT, PATHS)
            dq_b = _query_grad(qc, kb, gbc, lam_b, qf_b, da, doc, r, ~fwd_seen, fast_b, True, BT, DT, PREC)
            dk_b = _key_grad(qc, kb, gbc, lam_b, kf_b, da, vc, dr, ~fwd_seen, fast_b, True, BT, DT, PREC)
            dv_t += tl.dot((kb * kf_b).to(DT), dr.to(DT), input_precision=PREC)
            dlam_b, rest_b = _gate_grad_terms(qc, kb, gbc, dq_b, dk_b, 0.,
                                              tl.sum(r.to(tl.float32) * dr_next.to(tl.float32), axis=1))
            dq_t += dq_b
            if SEP_GB:
                _store_chunk(dgb, rest_b + dlam_b - tl.cumsum(dlam_b, axis=0, reverse=True), t0, T, K, H * K, BT)
            else:  # one suffix sum for both scans
                dlam -= dlam_b
                rest += rest_b + dlam_b
        dg_t = tl.cumsum(dlam, axis=0, reverse=True) + rest
        # both scans' scores in one product with do
        a = _scores(qc, k, gc, lam, fwd_seen, fast, False, BT, DT, PREC)
        if BIDIR:
            a += _scores(qc, kb, gbc, lam_b, ~fwd_seen, fast_b, True, BT, DT, PREC)
        dv_t += tl.dot(tl.trans(a.to(DT)), doc, input_precision=PREC)
        _store_chunk(dq, dq_t, t0, T, K, H * K, BT)
        _store_chunk(dg, dg_t, t0, T, K, H * K, BT)
        _store_chunk(dv, dv_t, t0, T, V, H * V, BT)


@triton.jit
def _metala_bwd_kernel(q, g, gb, v, do, dq, dg, dgb, dv, states, slow, T, scale,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BIDIR: tl.constexpr, SEP_GB: tl.constexpr, RECOMPUTE: tl.constexpr, PREC: tl.constexpr,
                       QS: tl.constexpr, VS: tl.constexpr, PATHS: tl.constexpr):
    """Step 2 of the backward: each chunk's gradients from the states around it, states [B*H, 2 + 2 BIDIR, N, K, V]
    = S, dS, R, dR (see _metala_states_kernel; with RECOMPUTE each program computes them from the other chunks, as
    the output kernel does).  dq, dg, dgb, dv: in the dtypes of q, g, gb, v, computed in fp32 and stored once;
    without SEP_GB, dgb is dg and receives nothing.  PATHS, slow and the grid as in _metala_out_kernel."""
    if PATHS == 'slow':
        NT = tl.cdiv(T, BT)
        for i in range(tl.program_id(0), tl.load(slow), tl.num_programs(0)):
            chunk = tl.load(slow + 1 + i)
            _grad_chunk(q, g, gb, v, do, dq, dg, dgb, dv, states, slow, chunk % NT, chunk // NT, T, scale, H, K, V,
                        BT, BIDIR, SEP_GB, RECOMPUTE, PREC, QS, VS, PATHS)
    else:
        _grad_chunk(q, g, gb, v, do, dq, dg, dgb, dv, states, slow, tl.program_id(0), tl.program_id(1), T, scale, H,
                    K, V, BT, BIDIR, SEP_GB, RECOMPUTE, PREC, QS, VS, PATHS)


def _chunk_len(T, K, V):
    """Tokens a chunk: 64 (32 with a 128-wide head, for shared memory), fewer for short sequences
    (tl.dot needs 16 at least)."""
    return min(32 if max(K, V) > 64 else 64, max(16, triton.next_power_of_2(T)))


# The backward kernel runs with 8 warps only: with 4 warps and 16-bit inputs, triton 3.6 on an H100 gave
# wrong dq and dg in the former fused backward kernel, which shared this one's per-chunk code (found by the GPU
# test suite; fp32 and every 8-warp config were right).
# The output kernel runs with 4 warps only: with 8, a launch that computed some chunks and left the others (the
# first form of _step2_launches) hit an illegal memory access on an H200 with triton 3.6 (B 128, T 197, bf16; 4
# warps were right at every gate regime: benchmarks/NOTES.md, session 13).  Its configs also cap it at 128
# registers: the fast launch then spills 160 bytes a thread (sm_90) but fits 4 programs an SM instead of 2, 2-4%
# faster forwards at T 197 (ops.md, session 18); the slow launch and the recomputing one spill 0.7-1.4 KB so,
# untimed: the autotuner chooses for each.
FWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2)]
OUT_CONFIGS = [triton.Config({}, num_warps=4, num_stages=s, maxnreg=r) for r in (None, 128) for s in (1, 2)]
BWD_CONFIGS = [triton.Config({}, num_warps=8, num_stages=s) for s in (1, 2)]


def _launcher(kernel, configs, key=('H', 'K', 'V', 'BT', 'BIDIR', 'SEP_GB', 'RECOMPUTE', 'QS', 'VS', 'PATHS'),
              restore=()):
    """kernel[grid](...) autotuned over configs on a GPU, once per compiled variant (T is left out of the
    key: the best launch depends on the chunk, not on the count of chunks; the arguments named in restore, which the
    kernel writes to and reads, such as step 2's list `slow`, are restored after each trial).  Once a variant is
    tuned, its config's options go straight to the kernel: triton's autotuner adds about half a launch's host time
    to each launch (scripts/host_time.py, benchmarks/NOTES.md session 15).  The interpreter has no driver to tune
    with, and METALA_AUTOTUNE=0 (many short test shapes) skips the tuning compiles: both run the first config."""
    if INTERPRET or os.environ.get('METALA_AUTOTUNE', '1') == '0':
        first = configs[0].all_kwargs()  # warps, stages and (OUT_CONFIGS) the register cap
        return lambda grid, *args, **kw: kernel[grid](*args, **kw, **first)
    tuned = triton.autotune(configs, key=list(key), restore_value=list(restore))(kernel)
    keyed = operator.itemgetter(*key)
    best = {}  # the autotuner's key (the values named in key, the tensors' dtypes) -> the tuned config's options

    def launch(grid, *args, **kw):
        variant = (keyed(kw), *[x.dtype for x in args if isinstance(x, torch.Tensor)])
        options = best.get(variant)
        if options is None:
            tuned[grid](*args, **kw)
            best[variant] = tuned.best_config.all_kwargs()
        else:
            kernel[grid](*args, **kw, **options)
    return launch


_states = _launcher(_metala_states_kernel, FWD_CONFIGS,
                    key=('H', 'K', 'V', 'BT', 'BIDIR', 'X_IS_Q', 'DIRS', 'FIRST', 'CARRY', 'QS', 'VS'))
_out = _launcher(_metala_out_kernel, OUT_CONFIGS, restore=('slow',))
_bwd = _launcher(_metala_bwd_kernel, BWD_CONFIGS, restore=('slow',))

# Step 1 carries each state through the chunks in one program per (batch, head), unless the sequence has at least
# COMBINE_MIN_CHUNKS chunks and there are fewer than CARRY_PROGRAMS_PER_SM such programs per SM: then it computes the
# chunks' terms in parallel and combines them.  Measured on an H200 at K 32 / V 64, fwd+bwd (benchmarks/ops.md):
# combined 2.7x faster at 16 384 tokens (B 2, H 6), even at 4 096 (B 12), 1.3x slower at 1 024 (B 64).
COMBINE_MIN_CHUNKS, CARRY_PROGRAMS_PER_SM = 64, 2
COMBINE_BLOCK, COMBINE_CHUNKS = 256, 16
# Without step 1 (RECOMPUTE), each program of step 2 computes the states around its chunk from the other chunks: one
# launch a forward and one a backward instead of 3 and 4, for more work on the GPU.  Worth it where the launches'
# host time exceeds the kernels' time: sequences of at most RECOMPUTE_MAX_CHUNKS chunks, at most
# RECOMPUTE_PROGRAMS_PER_SM (chunk, batch, head) programs per SM.  Measured on an H200 at T 197, H 6, K 32 / V 64,
# the kernels' fwd + bwd, recomputed vs stored states (benchmarks/NOTES.md, session 11): 0.28 vs 0.54 ms at B 32
# (5.8 programs per SM; stored is bound by its launches there), 0.41 vs 0.46 at B 48 (8.7), 0.54 vs 0.49 at B 64
# (11.6), 0.79 vs 0.65 at B 96 (17.5), 1.05 vs 0.78 at B 128 (23.3).  Whole-op calls from Python stay bound by
# the host up to B 128, where recomputing wins; a model under CUDA graphs does not wait on the host: there
# metala_vit_s trained 14% faster at B 128 with 16 than with 32 (4,952 vs 4,327 img/s); eager, the two were within
# the host's noise.
RECOMPUTE_MAX_CHUNKS, RECOMPUTE_PROGRAMS_PER_SM = 4, 16
# Programs an SM of step 2's 'slow' launch (_step2_launches): 1 (the backward's 8 warps at 255 registers fill an SM)
# left the forward at half speed where every chunk took the per-key path (6.2 vs 3.5 ms at B 128 T 197 on an H200);
# 4 gives 3.6.
SLOW_PROGRAMS_PER_SM = 4


@functools.cache
def _sm_count(device):
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 1


def _recompute_states(NT, BH, device):
    return NT <= RECOMPUTE_MAX_CHUNKS and NT * BH <= RECOMPUTE_PROGRAMS_PER_SM * _sm_count(device)


def _step2_launches(NT, BH, recompute, device):
    """Step 2's launches [(grid, PATHS)] and the int32 list that its 'fast' launch fills for its 'slow' one (see
    _metala_out_kernel).  The per-key path for chunks that decay past e^-30, compiled into a kernel, cost it a
    quarter of its time on an H200 even where no chunk took it (benchmarks/NOTES.md, session 12).  So where the
    states are stored, a launch without it computes the chunks that do not need it and lists the others, and a
    second launch of SLOW_PROGRAMS_PER_SM programs an SM computes those with it.  Recomputing programs (short
    sequences, launches few) keep both paths in one launch."""
    if recompute:
        return [((NT, BH), 'both')], torch.empty(0, dtype=torch.int32, device=device)
    slow = torch.empty(1 + NT * BH, dtype=torch.int32, device=device)  # emptied by step 1
    return [((NT, BH), 'fast'), ((min(NT * BH, SLOW_PROGRAMS_PER_SM * _sm_count(device)),), 'slow')], slow


def _carries(NT, BH, device):
    return NT < COMBINE_MIN_CHUNKS or BH >= CARRY_PROGRAMS_PER_SM * _sm_count(device)


def _states_dtype(v, NT, BH):
    """The dtype step 1 stores the states in: v's where it carries them, fp32 where it combines the chunks' terms
    (in place, in fp32).  Step 2's products read the states in v's dtype (its sums of state products convert them
    to fp32), so storing them so leaves the products as they were and halves the states' bytes with 16-bit
    inputs."""
    return v.dtype if _carries(NT, BH, v.device) else torch.float32


def _empty_states(v, shape, dtype):
    """Step 1's buffer of states [B*H, dirs, N, K, V], uninitialised: step 1 writes what step 2 reads (the tests fill
    it with NaN to check that)."""
    return v.new_empty(shape, dtype=dtype)


def _fill_states(states, slow, q, g, gb, v, do, T, scale, bidir, shapes):
    """Step 1: the states [B*H, dirs, N, K, V] of S (and R, bidir) in one launch, or with do (the backward's) of S,
    dS (and R, dR) in two, values and gradients (q and v in token rows, see token_rows; do contiguous or None;
    states in _states_dtype); empties step 2's list slow."""
    BH, dirs, NT, K, V = states.shape
    carry = _carries(NT, BH, q.device)
    decays = states if carry else states.new_empty(BH, dirs, NT, K)  # unused when carrying
    scans = 2 if bidir else 1
    for x_is_q in [False] + ([] if do is None else [True]):
        _states((scans if carry else NT * scans, BH), q, g, gb, v, v if do is None else do, states, decays, slow, T,
                scale, BIDIR=bidir, X_IS_Q=x_is_q, DIRS=dirs, FIRST=int(x_is_q), CARRY=carry, QS=q.stride(1),
                VS=v.stride(1), **shapes)
    if not carry:
        slots = (['S', 'dS', 'R', 'dR'] if do is not None else ['S', 'R'])[:dirs]
        reversed_slots = sum(1 << slot for slot, name in enumerate(slots) if name in ('R', 'dS'))
        _metala_combine_kernel[(triton.cdiv(K * V, COMBINE_BLOCK), BH * dirs)](
            states, decays, NT, K=K, V=V, DIRS=dirs, REVERSED=reversed_slots, BLOCK=COMBINE_BLOCK,
            CHUNKS=COMBINE_CHUNKS, num_warps=4)


def _step1(q, g, gb, v, do, scale, causal):
    """What step 2 of a forward (do None) or a backward reads: the states of step 1 (none when step 2 recomputes
    them), its list of slow chunks, its launches [(grid, paths)] and its kernels' constants."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = _chunk_len(T, K, V)
    NT = triton.cdiv(T, BT)
    recompute = _recompute_states(NT, B * H, v.device)
    shapes = dict(H=H, K=K, V=V, BT=BT, PREC=_precision(v))
    # S (and R), entering each chunk; with do also dS (and dR)
    dirs = (1 if causal else 2) * (1 if do is None else 2)
    states = _empty_states(v, (0 if recompute else B * H, dirs, NT, K, V), _states_dtype(v, NT, B * H))
    launches, slow = _step2_launches(NT, B * H, recompute, v.device)
    if not recompute:
        _fill_states(states, slow, q, g, gb, v, do, T, scale, not causal, shapes)
    return states, slow, launches, dict(shapes, BIDIR=not causal, RECOMPUTE=recompute, QS=q.stride(1), VS=v.stride(1))


def _chunk_fwd(q: torch.Tensor, g: torch.Tensor, gb: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
               sep: bool) -> torch.Tensor:
    """q, g, gb: [B, T, H, K]; v: [B, T, H, V] (g, gb contiguous, gb is g unless sep; q, v in token rows, see
    token_rows) -> o: [B, T, H, V], contiguous."""
    o = v.new_empty(v.shape)
    states, slow, launches, consts = _step1(q, g, gb, v, None, scale, causal)
    for grid, paths in launches:
        _out(grid, q, g, gb, v, o, states, slow, q.shape[1], scale, SEP_GB=sep, PATHS=paths, **consts)
    return o


def _chunk_bwd(q: torch.Tensor, g: torch.Tensor, gb: torch.Tensor, v: torch.Tensor, do: torch.Tensor, scale: float,
               causal: bool, sep: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dg, dgb, dv in the dtypes of q, g, gb, v (dgb is empty [0] unless sep; without sep both scans' gate
    grads go to dg).  Each program computes its chunk's gradients whole in fp32 and stores them once."""
    dq, dg, dv = q.new_empty(q.shape), g.new_empty(g.shape), v.new_empty(v.shape)  # contiguous
    dgb = gb.new_empty(gb.shape) if sep else g.new_empty(0)
    do = do.contiguous()
    states, slow, launches, consts = _step1(q, g, gb, v, do, scale, causal)
    for grid, paths in launches:
        _bwd(grid, q, g, gb, v, do, dq, dg, dgb if sep else dg, dv, states, slow, q.shape[1], scale, SEP_GB=sep,
             PATHS=paths, **consts)
    return dq, dg, dgb, dv


def _precision(v):
    return 'ieee' if v.dtype == torch.float32 else 'tf32'


def _chunk_fwd_fake(q, g, gb, v, scale, causal, sep):
    return v.new_empty(v.shape)


def _chunk_bwd_fake(q, g, gb, v, do, scale, causal, sep):
    return q.new_empty(q.shape), g.new_empty(g.shape), gb.new_empty(gb.shape) if sep else g.new_empty(0), \
        v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, g, gb, v, ctx.scale, ctx.causal, ctx.sep = inputs
    ctx.save_for_backward(q, g, gb, v)


def _input_grads(ctx, do, chunk_bwd):
    q, g, gb, v = ctx.saved_tensors
    dq, dg, dgb, dv = chunk_bwd(q, g, gb, v, do, ctx.scale, ctx.causal, ctx.sep)
    return dq, dg, dgb if ctx.sep else None, dv, None, None, None


_chunk = kernel_op('metala_kernels::chunk', _chunk_fwd, _chunk_bwd, _chunk_fwd_fake, _chunk_bwd_fake, _setup_context,
                   _input_grads)


def token_rows(x):
    """x [B, T, H, D] as the kernels read it, without a copy where it already is: each token's H * D values side by
    side in one row, rows x.stride(1) apart and batches T rows apart (contiguous, or a view of a wider [B, T, C]
    such as a split in-projection gives); a copy (contiguous) otherwise."""
    B, T, H, D = x.shape
    rows = x.stride(3) == 1 and (H == 1 or x.stride(2) == D) and x.stride(1) >= H * D \
        and (B == 1 or x.stride(0) == T * x.stride(1))
    return x if rows else x.contiguous()


def chunk_metala(q, g, v, g_bwd=None, scale=1.0, causal=False):
    """Triton MetaLA attention core (no mask, no self-augmentation): scale * sum_j (q_i . k_j D_ij) v_j.
    Under torch.compile a custom op (metala_kernels::chunk_fwd) that the compiler keeps whole."""
    sep = g_bwd is not None and not causal
    q, g, v = token_rows(q), g.contiguous(), token_rows(v)
    return _chunk(q, g, g_bwd.contiguous() if sep else g, v, float(scale), causal, sep)
