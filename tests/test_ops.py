"""MetaLA attention: every implementation against the float64 recurrence, outputs and gradients.

On a CUDA machine the Triton kernels run compiled; on the CPU they run under TRITON_INTERPRET=1 (set by
.ci/run) at small shapes, and are skipped without it.
"""
import os

import pytest
import torch

from metala_kernels import chunk_metala_torch, metala_attn, metala_readout, naive_parallel_metala, naive_recurrent_metala
from metala_kernels.chunk_torch import readout_torch

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
TRITON_OK = DEVICE == 'cuda' or os.environ.get('TRITON_INTERPRET') == '1'
NEEDS_TRITON = pytest.mark.skipif(not TRITON_OK, reason='Triton needs CUDA or TRITON_INTERPRET=1')
BACKENDS = ['torch', pytest.param('triton', marks=NEEDS_TRITON)]
# ||out - ref|| / ||ref|| allowed per input dtype
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def rel_err(out, ref):
    assert torch.isfinite(out).all(), 'non-finite values'
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, K, V, *, g_low=-1.0, sep=False, masked=False, aug=False, seed=None):
    """Fresh random inputs (float64 masters); g in [g_low, 0)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x = dict(q=torch.randn(B, T, H, K, generator=gen, dtype=torch.float64),
             g=torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * g_low,
             v=torch.randn(B, T, H, V, generator=gen, dtype=torch.float64))
    if sep:
        x['g_bwd'] = torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) * g_low
    if aug:
        x['aug_weight'] = torch.randn(H, K, generator=gen, dtype=torch.float64) * 0.5
    mask = None
    if masked:  # right-padded sequences of random lengths, at least one real token each
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        mask = (torch.arange(T)[None] < lengths[:, None]).to(DEVICE)
    return x, mask


def run(x, mask, dtype, do, **kw):
    """Outputs and gradients of metala_attn (or the oracle for float64) at dtype on DEVICE."""
    weight_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # a parameter's dtype
    leaves = {n: t.to(DEVICE, weight_dtype if n == 'aug_weight' else dtype, copy=True).requires_grad_() for n, t in x.items()}
    fn = kw.pop('fn', metala_attn)
    o = fn(leaves['q'], leaves['g'], leaves['v'], g_bwd=leaves.get('g_bwd'), mask=mask,
           aug_weight=leaves.get('aug_weight'), **kw)
    o.backward(do.to(DEVICE, o.dtype))
    return {'o': o, **{'d' + n: t.grad for n, t in leaves.items()}}


def oracle(x, mask, do, causal):
    return run(x, mask, torch.float64, do, fn=naive_recurrent_metala, causal=causal)


def assert_close(out, ref, tol):
    for name in ref:
        err = rel_err(out[name], ref[name])
        assert err < tol, f'{name}: rel err {err:.2e} >= {tol:.0e}'


def test_references_agree():
    """The materialised T x T form equals the recurrence, with every option on."""
    for causal in (False, True):
        x, mask = make_inputs(2, 23, 2, 16, 32, sep=True, masked=True, aug=True)
        a = naive_recurrent_metala(x['q'], x['g'], x['v'], causal=causal, g_bwd=x['g_bwd'], mask=mask.cpu(),
                                   aug_weight=x['aug_weight'])
        b = naive_parallel_metala(x['q'], x['g'], x['v'], causal=causal, g_bwd=x['g_bwd'], mask=mask.cpu(),
                                  aug_weight=x['aug_weight'])
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('T', [1, 7, 63, 65, 197])
def test_matches_oracle(backend, causal, T):
    """Outputs and gradients of q, g, v (and g_bwd, aug_weight, with a mask) equal the float64 oracle."""
    sep, masked, aug = T % 2 == 1, T > 1, T in (7, 65)
    x, mask = make_inputs(2, T, 2, 16, 32, sep=sep and not causal, masked=masked, aug=aug)
    do = torch.randn(2, T, 2, 32, dtype=torch.float64)
    ref = oracle(x, mask, do, causal)
    out = run(x, mask, torch.float32, do, causal=causal, backend=backend)
    assert_close(out, ref, TOL[torch.float32])


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('K,V', [(32, 64), (64, 64), (128, 32)])
def test_head_dims(backend, K, V):
    x, mask = make_inputs(1, 40, 2, K, V)
    do = torch.randn(1, 40, 2, V, dtype=torch.float64)
    assert_close(run(x, mask, torch.float32, do, backend=backend), oracle(x, mask, do, False), TOL[torch.float32])


@pytest.mark.parametrize('g_low', [-0.2, -0.8])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('backend, states', [('torch', None), pytest.param('triton', 'recomputed', marks=NEEDS_TRITON),
                                             pytest.param('triton', 'stored', marks=NEEDS_TRITON)])
def test_half_precision(backend, states, dtype, g_low, monkeypatch):
    """Half inputs: result in the input dtype, error measured against the oracle on the rounded inputs.  With
    g_low -0.8 a 64-token chunk decays by about e^-26: one product's factors (up to e^26) would overflow fp16.  The
    Triton kernels' states recomputed by each program of step 2, or stored by step 1 (in the input dtype)."""
    if backend == 'triton' and dtype == torch.bfloat16 and DEVICE == 'cpu':
        pytest.skip("triton's interpreter has no bfloat16 (no get_bf16); checked on CUDA")
    if states == 'stored':
        from metala_kernels import chunk
        monkeypatch.setattr(chunk, 'RECOMPUTE_MAX_CHUNKS', 0)
    x, mask = make_inputs(2, 100, 2, 32, 64, g_low=g_low)
    x = {n: t.to(dtype).double() for n, t in x.items()}
    do = torch.randn(2, 100, 2, 64, dtype=torch.float64).to(dtype).double()
    out = run(x, mask, dtype, do, backend=backend)
    assert out['o'].dtype == dtype and out['dq'].dtype == dtype
    assert_close(out, oracle(x, mask, do, False), TOL[dtype])


@pytest.mark.parametrize('backend', BACKENDS)
def test_matches_fla_gla_in_causal_mode(backend):
    """Causal mode is fla's GLA with k = 1 - alpha: naive_recurrent_gla(q, 1 - alpha, v, log alpha)."""
    from fla.ops.gla.naive import naive_recurrent_gla
    x, _ = make_inputs(2, 50, 2, 32, 64)
    ref, _ = naive_recurrent_gla(x['q'], 1 - x['g'].exp(), x['v'], x['g'])  # scale K^-0.5 there and here
    o = metala_attn(*(x[n].float().to(DEVICE) for n in 'qgv'), causal=True, backend=backend)
    assert rel_err(o.cpu(), ref) < TOL[torch.float32]


@pytest.mark.parametrize('backend', BACKENDS)
def test_bidirectional_is_causal_plus_flipped_causal_minus_diagonal(backend):
    q, g, v = (x.float().to(DEVICE) for x in make_inputs(2, 70, 2, 16, 16)[0].values())
    bidir = metala_attn(q, g, v, backend=backend)
    fwd = metala_attn(q, g, v, causal=True, backend=backend)
    bwd = metala_attn(q.flip(1), g.flip(1), v.flip(1), causal=True, backend=backend).flip(1)
    diag = (q * (1 - g.exp())).sum(-1, keepdim=True) * v * q.shape[-1] ** -0.5
    assert rel_err(bidir, fwd + bwd - diag) < 1e-5


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('causal', [False, True])
def test_padding_invariance(backend, causal):
    """Appending pads of random content changes no real output or gradient; pads output exactly zero."""
    T, P = 33, 31
    x, _ = make_inputs(2, T, 2, 16, 32, sep=not causal, aug=True)
    padded, _ = make_inputs(2, T + P, 2, 16, 32, sep=not causal, aug=True)
    for n in x:
        padded[n] = torch.cat([x[n], padded[n][:, T:]], 1) if n != 'aug_weight' else x[n]
    mask = torch.zeros(2, T + P, dtype=torch.bool, device=DEVICE)
    mask[:, :T] = True
    do = torch.randn(2, T + P, 2, 32, dtype=torch.float64)
    short = run(x, None, torch.float32, do[:, :T], causal=causal, backend=backend)
    long = run(padded, mask, torch.float32, do, causal=causal, backend=backend)
    assert long['o'][:, T:].abs().max() == 0
    for name in short:
        cut = long[name] if name == 'daug_weight' else long[name][:, :T]
        assert rel_err(cut, short[name]) < 1e-5, name


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('g_value', [-1e-7, -20.0])
def test_extreme_gates(backend, g_value):
    """alpha -> 1 and alpha ~ 2e-9 (the chunk fallback path): finite and equal to the oracle."""
    x, mask = make_inputs(1, 130, 2, 16, 16)
    x['g'] = torch.full_like(x['g'], g_value) * (0.5 + torch.rand_like(x['g']))
    do = torch.randn(1, 130, 2, 16, dtype=torch.float64)
    assert_close(run(x, mask, torch.float32, do, backend=backend), oracle(x, mask, do, False), TOL[torch.float32])


@pytest.mark.parametrize('backend', BACKENDS)
def test_chunks_of_both_gate_regimes_in_one_call(backend):
    """Chunks whose decay is exact as one product (alpha near 1) beside chunks that need the per-pair decays
    (alpha near 0), in one call: both paths, and the seams between them, against the oracle."""
    near_zero = (torch.arange(150) // 64 % 2 == 1)[None, :, None, None]  # runs of 64: whole Triton chunks
    do = torch.randn(2, 150, 2, 32, dtype=torch.float64)
    for causal in (False, True):
        x, mask = make_inputs(2, 150, 2, 16, 32, sep=not causal, aug=True, seed=11)
        for name in set(x) & {'g', 'g_bwd'}:
            x[name] = torch.where(near_zero, x[name] * 20 - 10, x[name] * 0.1)
        assert_close(run(x, mask, torch.float32, do, causal=causal, backend=backend), oracle(x, mask, do, causal),
                     TOL[torch.float32])


@NEEDS_TRITON
@pytest.mark.parametrize('dtype, log_decays', [(torch.float32, [-31.5, -31, -30.5, -30, -29.5]),
                                               (torch.float16, [-11, -10.5, -10, -9.5])])
def test_chunks_at_the_launch_thresholds(dtype, log_decays, monkeypatch):
    """With the states stored, step 2 runs a launch without the per-key path, which lists the chunks that decay
    past a threshold, and a launch with it over that list: chunks decaying by e^x for x across the threshold (e^-30,
    fp16 e^-10), one a chunk, each computed (a chunk left to neither launch holds garbage) and equal to the oracle.
    The list comes with garbage in it (two entries of chunk 0): step 1 empties it, so it ends listing each chunk
    below the threshold once."""
    from metala_kernels import chunk
    monkeypatch.setattr(chunk, 'RECOMPUTE_MAX_CHUNKS', 0)
    lists, step2_launches = [], chunk._step2_launches

    def with_garbage(*args):
        launches, slow = step2_launches(*args)
        lists.append(slow.fill_(0).index_fill_(0, torch.tensor([0], device=slow.device), 2))
        return launches, slow
    monkeypatch.setattr(chunk, '_step2_launches', with_garbage)
    BT, T = 64, 64 * len(log_decays)
    x, mask = make_inputs(1, T, 2, 16, 32, seed=13)
    x = {n: t.to(dtype).double() for n, t in x.items()}
    x['g'] = (torch.tensor(log_decays, dtype=torch.float64) / BT).repeat_interleave(BT)[None, :, None, None] \
        .expand_as(x['g']).to(dtype).double()
    do = torch.randn(1, T, 2, 32, dtype=torch.float64).to(dtype).double()
    assert_close(run(x, mask, dtype, do, backend='triton'), oracle(x, mask, do, False), TOL[dtype])
    assert len(lists) == 2  # forward, backward
    for slow in lists:
        count, ids = slow[0].item(), slow[1:1 + slow[0]].tolist()
        assert 0 < count <= 2 * len(log_decays) and len(set(ids)) == count, (count, ids)


@NEEDS_TRITON
@pytest.mark.parametrize('states', ['carried', 'combined', 'recomputed'])
@pytest.mark.parametrize('causal', [False, True])
def test_state_boundaries(causal, states, monkeypatch):
    """The Triton kernels against the oracle over 5 chunks with padding, separate backward gates and a chunk that
    needs per-pair decays (alpha ~ 0 in its middle) between chunks that do not, gradients included: the states
    entering each chunk (carried through the chunks by one program, or the chunks' terms combined 2 at a time, so
    across 3 tiles, the last one partial, or recomputed by each chunk's program from the others), and the gate
    gradient's part from later chunks (the boundary products).  The states' buffer starts as NaN: step 2 reads only
    what step 1 wrote (no state is stored entering the first chunk a scan passes)."""
    from metala_kernels import chunk
    monkeypatch.setattr(chunk, '_empty_states', lambda v, shape, dtype: v.new_full(shape, float('nan'), dtype=dtype))
    monkeypatch.setattr(chunk, 'RECOMPUTE_MAX_CHUNKS', 5 if states == 'recomputed' else 0)
    monkeypatch.setattr(chunk, 'RECOMPUTE_PROGRAMS_PER_SM', 10 ** 9)
    monkeypatch.setattr(chunk, 'CARRY_PROGRAMS_PER_SM', 0 if states == 'carried' else 10 ** 9)
    monkeypatch.setattr(chunk, 'COMBINE_MIN_CHUNKS', 2)
    monkeypatch.setattr(chunk, 'COMBINE_CHUNKS', 2)
    T = 260
    x, _ = make_inputs(2, T, 2, 16, 32, sep=not causal, aug=True, seed=12)
    mask = (torch.arange(T)[None] < torch.tensor([[T], [150]])).to(DEVICE)  # real tokens up to the last chunk
    near_zero = ((torch.arange(T) - 80).abs() < 16)[None, :, None, None]  # inside chunk 1, away from its edges
    for name in set(x) & {'g', 'g_bwd'}:
        x[name] = torch.where(near_zero, x[name] * 20 - 10, x[name] * 0.1)
    do = torch.randn(2, T, 2, 32, dtype=torch.float64)
    assert_close(run(x, mask, torch.float32, do, causal=causal, backend='triton'), oracle(x, mask, do, causal),
                 TOL[torch.float32])


@NEEDS_TRITON
@pytest.mark.parametrize('T', [1, 20, 70])
def test_stored_states_of_one_and_two_chunks(T, monkeypatch):
    """States stored by step 1 where a scan passes one chunk (none stored at all) or two: step 2 reads only what
    was written (the buffer starts as NaN), both modes, gradients included."""
    from metala_kernels import chunk
    monkeypatch.setattr(chunk, '_empty_states', lambda v, shape, dtype: v.new_full(shape, float('nan'), dtype=dtype))
    monkeypatch.setattr(chunk, 'RECOMPUTE_MAX_CHUNKS', 0)
    x, _ = make_inputs(2, T, 2, 16, 32, seed=T)
    do = torch.randn(2, T, 2, 32, dtype=torch.float64)
    for causal in (False, True):
        assert_close(run(x, None, torch.float32, do, causal=causal, backend='triton'), oracle(x, None, do, causal),
                     TOL[torch.float32])


@pytest.mark.parametrize('g_value', [-1e-7, -20.0])
def test_long_sequence_extreme_gates(g_value):
    """T = 65536 in fp32 (Triton on CUDA, PyTorch on the CPU): finite and equal to the float64 chunked path."""
    T = 65536
    gen = torch.Generator().manual_seed(0)
    q, v = torch.randn(1, T, 1, 16, generator=gen), torch.randn(1, T, 1, 16, generator=gen)
    g = torch.full((1, T, 1, 16), g_value) * (0.5 + torch.rand(1, T, 1, 16, generator=gen))
    ref = chunk_metala_torch(q.double(), g.double(), v.double(), scale=0.25)
    o = metala_attn(q.to(DEVICE), g.to(DEVICE), v.to(DEVICE))
    assert rel_err(o.cpu(), ref) < TOL[torch.float32]


@pytest.mark.parametrize('backend', BACKENDS)
def test_non_contiguous_inputs(backend):
    x, _ = make_inputs(2, 20, 2, 16, 16)
    q, g, v = (t.float().to(DEVICE).transpose(1, 2).contiguous().transpose(1, 2) for t in x.values())
    assert not q.is_contiguous()
    ref = naive_recurrent_metala(*(t.double() for t in (q, g, v)))
    assert rel_err(metala_attn(q, g, v, backend=backend), ref) < TOL[torch.float32]


@NEEDS_TRITON
@pytest.mark.parametrize('states', ['recomputed', 'carried'])
@pytest.mark.parametrize('causal', [False, True])
def test_token_row_views_are_read_in_place(causal, states, monkeypatch):
    """q and v as views of one wider [B, T, C] row per token (a split in-projection): the Triton kernels read them
    without a copy (token_rows) and match the float64 oracle, gradients included; other layouts are copied."""
    from metala_kernels import chunk
    monkeypatch.setattr(chunk, 'RECOMPUTE_MAX_CHUNKS', 4 if states == 'recomputed' else 0)
    monkeypatch.setattr(chunk, 'RECOMPUTE_PROGRAMS_PER_SM', 10 ** 9)
    B, T, H, K, V = 2, 197, 2, 16, 32
    x, _ = make_inputs(B, T, H, K, V, seed=3)
    do = torch.randn(B, T, H, V, dtype=torch.float64)
    rows = torch.cat([x['q'].flatten(2), x['v'].flatten(2), torch.randn(B, T, 8, dtype=torch.float64)], -1)
    rows = rows.float().to(DEVICE).requires_grad_()
    g = x['g'].float().to(DEVICE).requires_grad_()
    q, v = rows[..., :H * K].unflatten(-1, (H, K)), rows[..., H * K:H * (K + V)].unflatten(-1, (H, V))
    assert chunk.token_rows(q) is q and chunk.token_rows(v) is v
    assert chunk.token_rows(q.transpose(0, 1).contiguous().transpose(0, 1)) is not q
    o = metala_attn(q, g, v, causal=causal, backend='triton')
    o.backward(do.to(DEVICE, o.dtype))
    out = dict(o=o, dq=rows.grad[..., :H * K].unflatten(-1, (H, K)), dg=g.grad,
               dv=rows.grad[..., H * K:H * (K + V)].unflatten(-1, (H, V)))
    assert_close(out, oracle(x, None, do, causal), TOL[torch.float32])
    assert (rows.grad[..., H * (K + V):] == 0).all()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('causal', [False, True])
def test_torch_compile_fullgraph(backend, causal):
    """torch.compile keeps the operator in one graph (the Triton kernels are a custom op) and matches eager."""
    x, mask = make_inputs(2, 21, 2, 16, 32, sep=not causal, masked=True, aug=True, seed=3)
    do = torch.randn(2, 21, 2, 32, dtype=torch.float64)
    eager = run(x, mask, torch.float32, do, causal=causal, backend=backend)
    fn = torch.compile(metala_attn, backend='aot_eager', fullgraph=True)
    compiled = run(x, mask, torch.float32, do, fn=fn, causal=causal, backend=backend)
    assert_close(compiled, eager, 1e-5)


@NEEDS_TRITON
def test_eager_mode_skips_the_custom_op_dispatch():
    """Eager calls run the kernels through a plain autograd.Function (the custom op's Python dispatch costs more
    host time than the launches); torch.compile gets the custom op (test above)."""
    from metala_kernels.chunk import chunk_metala
    x, _ = make_inputs(1, 16, 1, 16, 32, seed=4)
    q, g, v = (x[n].to(DEVICE, torch.float32).requires_grad_() for n in ('q', 'g', 'v'))
    assert chunk_metala(q, g, v).grad_fn.name() == 'chunkBackward'
    o = metala_readout(v, q, g, v, v, torch.zeros(1, 16, device=DEVICE, requires_grad=True), backend='triton')
    assert o.grad_fn.name() == 'readoutBackward'


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('aug', [True, False])
@pytest.mark.parametrize('K,V', [(32, 64), (16, 128)])
def test_readout_matches_float64(backend, aug, K, V):
    """y = silu(gate) * LayerNorm(o + aug): fused kernel (and torch path) vs float64, gradients included."""
    gen = torch.Generator().manual_seed(K + V + aug)
    B, T, H = 2, 37, 3  # 37 * 2 rows: the last row block is partial
    x = dict(o=torch.randn(B, T, H, V, generator=gen), q=torch.randn(B, T, H, K, generator=gen),
             g=-torch.rand(B, T, H, K, generator=gen) * 3, v=torch.randn(B, T, H, V, generator=gen),
             gate=torch.randn(B, T, H, V, generator=gen) * 2)
    if aug:
        x['w'] = torch.randn(H, K, generator=gen)
    dy = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)

    def grads(fn, dtype):
        leaves = {n: t.to(DEVICE, dtype, copy=True).requires_grad_() for n, t in x.items()}
        y = fn(leaves['o'], leaves['q'], leaves['g'], leaves['v'], leaves['gate'], leaves.get('w'))
        y.backward(dy.to(DEVICE, dtype))
        return {'y': y, **{'d' + n: t.grad for n, t in leaves.items() if t.grad is not None}}

    ref = grads(readout_torch, torch.float64)
    out = grads(lambda *a: metala_readout(*a, backend=backend), torch.float32)
    assert set(out) == set(ref) == {'y', 'do', 'dgate'} | ({'dq', 'dg', 'dv', 'dw'} if aug else set())
    assert_close(out, ref, 1e-5)


@NEEDS_TRITON
def test_readout_reads_token_row_views():
    """q, v and gate as views of one [B, T, C] row per token: the fused readout (Triton) equals the PyTorch path on
    contiguous copies, gradients included."""
    gen = torch.Generator().manual_seed(5)
    B, T, H, K, V = 2, 37, 3, 16, 32
    o, g = torch.randn(B, T, H, V, generator=gen), -torch.rand(B, T, H, K, generator=gen) * 3
    rows = torch.randn(B, T, H * (K + 2 * V) + 4, generator=gen)
    w, dy = torch.randn(H, K, generator=gen), torch.randn(B, T, H, V, generator=gen)

    def grads(backend, copy):
        leaves = [t.to(DEVICE, copy=True).requires_grad_() for t in (o, g, rows, w)]
        lo, lg, lrows, lw = leaves
        q, v, gate = (lrows[..., a:b].unflatten(-1, (H, -1)) for a, b in
                      ((0, H * K), (H * K, H * (K + V)), (H * (K + V), H * (K + 2 * V))))
        if copy:
            q, v, gate = q.contiguous(), v.contiguous(), gate.contiguous()
        y = metala_readout(lo, q, lg, v, gate, lw, backend=backend)
        y.backward(dy.to(DEVICE))
        return {'y': y, **{name: t.grad for name, t in zip(('do', 'dg', 'drows', 'dw'), leaves)}}

    assert_close(grads('triton', copy=False), grads('torch', copy=True), 1e-5)


def test_readout_bad_shapes_are_named():
    o, q = torch.randn(1, 4, 2, 32), torch.randn(1, 4, 2, 16)
    with pytest.raises(ValueError, match='gate must have shape'):
        metala_readout(o, q, -q.abs(), o, torch.randn(1, 4, 2, 16))
    with pytest.raises(ValueError, match=r'aug_weight must have shape \[H, K\]'):
        metala_readout(o, q, -q.abs(), o, o, torch.randn(2, 32))


def test_float64_on_the_torch_path_only():
    x, mask = make_inputs(2, 19, 2, 16, 32, sep=True, aug=True, seed=5)
    o = metala_attn(x['q'], x['g'], x['v'], g_bwd=x['g_bwd'], aug_weight=x['aug_weight'], backend='torch')
    ref = naive_recurrent_metala(x['q'], x['g'], x['v'], g_bwd=x['g_bwd'], aug_weight=x['aug_weight'])
    assert o.dtype == torch.float64 and rel_err(o, ref) < 1e-12
    with pytest.raises(ValueError, match='float64 runs on the PyTorch path only'):
        metala_attn(x['q'], x['g'], x['v'], backend='triton')


def test_second_order_gradients_on_the_torch_path_only():
    """A gradient penalty differentiates the op's backward: the PyTorch path does it (against float64), the Triton
    kernels' backward, not itself differentiable, raises instead of leaving the penalty's share out (as it did)."""
    x, _ = make_inputs(1, 21, 2, 16, 32, seed=6)
    do = torch.randn(1, 21, 2, 32, dtype=torch.float64)

    def penalty_grads(fn, dtype, **kw):
        q, g, v = (x[n].to(DEVICE, dtype, copy=True).requires_grad_() for n in ('q', 'g', 'v'))
        o = fn(q, g, v, **kw)
        dq, = torch.autograd.grad((o * do.to(DEVICE, dtype)).sum(), q, create_graph=True)
        (dq.square().sum() + o.sum()).backward()
        return {'dg': g.grad, 'dv': v.grad}

    ref = penalty_grads(naive_recurrent_metala, torch.float64)
    assert_close(penalty_grads(metala_attn, torch.float32, backend='torch'), ref, TOL[torch.float32])
    if TRITON_OK:
        with pytest.raises(RuntimeError, match='second-order gradient'):
            penalty_grads(metala_attn, torch.float32, backend='triton')
        o, q = torch.randn(1, 4, 2, 32, device=DEVICE, requires_grad=True), torch.randn(1, 4, 2, 16, device=DEVICE)
        do, = torch.autograd.grad(metala_readout(o, q, -q.abs(), o, o, backend='triton').sum(), o, create_graph=True)
        with pytest.raises(RuntimeError, match='second-order gradient'):
            do.sum().backward()

def _bad(**overrides):
    args = dict(q=torch.randn(2, 8, 2, 16), g=-torch.rand(2, 8, 2, 16), v=torch.randn(2, 8, 2, 32))
    args.update(overrides)
    return args


@pytest.mark.parametrize('overrides,match', [
    (dict(q=torch.randn(2, 8, 32)), r'q must have shape \[B, T, H, K\]'),
    (dict(v=torch.randn(2, 9, 2, 32)), r'v must have shape \[B, T, H, V\] = \[2, 8, 2, V\]'),
    (dict(g=-torch.rand(2, 8, 3, 16)), r'g must have the shape of q'),
    (dict(g=torch.rand(2, 8, 2, 16)), r'g = log\(alpha\) must be <= 0'),
    (dict(q=torch.randn(2, 8, 2, 24), g=-torch.rand(2, 8, 2, 24)), r'K=24 .* must each be one of'),
    (dict(v=torch.randn(2, 8, 2, 32, dtype=torch.float64)), r'q and v must share one dtype'),
    (dict(mask=torch.ones(2, 7, dtype=torch.bool)), r'mask must have shape \[B, T\] = \[2, 8\]'),
    (dict(mask=torch.ones(2, 8)), r'mask must be a bool tensor'),
    (dict(aug_weight=torch.zeros(16)), r'aug_weight must have shape \[H, K\] = \[2, 16\]'),
    (dict(g_bwd=-torch.rand(2, 8, 2, 8)), r'g_bwd must have the shape of q'),
    (dict(q=torch.randn(2, 0, 2, 16), g=-torch.rand(2, 0, 2, 16), v=torch.randn(2, 0, 2, 32)), r'at least one token'),
])
def test_bad_input_is_named(overrides, match):
    args = _bad(**overrides)
    with pytest.raises(ValueError, match=match):
        metala_attn(args.pop('q'), args.pop('g'), args.pop('v'), **args)


@pytest.mark.skipif(DEVICE != 'cuda', reason='needs a second device')
def test_device_mismatch_is_named():
    args = _bad()
    with pytest.raises(ValueError, match=r'v is on cpu but q is on cuda'):
        metala_attn(args['q'].cuda(), args['g'].cuda(), args['v'])
