"""metala_attn: the one entry point.  Checks its inputs, then runs the Triton kernels on CUDA tensors and the
chunked PyTorch path elsewhere."""
import torch

from .chunk_torch import chunk_metala_torch, readout_torch, self_augmentation

SUPPORTED_DIMS = (16, 32, 64, 128)
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TORCH_PATH_DTYPES = FLOAT_DTYPES + (torch.float64,)  # the PyTorch path also computes in float64


def _check_head_dims(K, V, v_name):
    if K not in SUPPORTED_DIMS or V not in SUPPORTED_DIMS:
        raise ValueError(f'head dims K={K} (q, g) and V={V} ({v_name}) must each be one of {SUPPORTED_DIMS}')


def _check_aug_weight(aug_weight, H, K):
    if aug_weight is not None and tuple(aug_weight.shape) != (H, K):
        raise ValueError(f'aug_weight must have shape [H, K] = [{H}, {K}], got {tuple(aug_weight.shape)}')


def _check(q, g, v, g_bwd, mask, aug_weight, check_gates, dtypes):
    for name, x in (('q', q), ('g', g), ('v', v), ('g_bwd', g_bwd), ('aug_weight', aug_weight)):
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if q.dim() != 4:
        raise ValueError(f'q must have shape [B, T, H, K], got {tuple(q.shape)}')
    B, T, H, K = q.shape
    if T < 1:
        raise ValueError(f'q must hold at least one token (T >= 1), got shape {tuple(q.shape)}')
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f'v must have shape [B, T, H, V] = [{B}, {T}, {H}, V] like q, got {tuple(v.shape)}')
    V = v.shape[-1]
    for name, x in (('g', g), ('g_bwd', g_bwd)):
        if x is not None and tuple(x.shape) != (B, T, H, K):
            raise ValueError(f'{name} must have the shape of q [B, T, H, K] = {[B, T, H, K]}, got {tuple(x.shape)}')
    _check_head_dims(K, V, 'v')
    if q.dtype not in dtypes or v.dtype != q.dtype:
        raise ValueError(f'q and v must share one dtype of {dtypes}, got q {q.dtype}, v {v.dtype}'
                         + (' (float64 runs on the PyTorch path only: CPU tensors or backend=\'torch\')'
                            if torch.float64 in (q.dtype, v.dtype) else ''))
    for name, x in (('g', g), ('g_bwd', g_bwd)):
        if x is not None and x.dtype not in dtypes:
            raise ValueError(f'{name} must be one of {dtypes}, got {x.dtype}')
    if mask is not None:
        if tuple(mask.shape) != (B, T):
            raise ValueError(f'mask must have shape [B, T] = [{B}, {T}] (True = real token), got {tuple(mask.shape)}')
        if mask.dtype != torch.bool:
            raise ValueError(f'mask must be a bool tensor (True = real token), got {mask.dtype}')
    _check_aug_weight(aug_weight, H, K)
    for name, x in (('g', g), ('v', v), ('g_bwd', g_bwd), ('mask', mask), ('aug_weight', aug_weight)):
        if x is not None and x.device != q.device:
            raise ValueError(f'{name} is on {x.device} but q is on {q.device}: all inputs must share a device')
    for name, x in (('g', g), ('g_bwd', g_bwd)):
        if x is not None and check_gates and not torch.compiler.is_compiling() and bool((x > 0).any()):
            raise ValueError(f'{name} = log(alpha) must be <= 0 everywhere (alpha in (0, 1]); '
                             f'max is {x.max().item():.3g}')


def metala_attn(q, g, v, *, causal=False, g_bwd=None, scale=None, mask=None, aug_weight=None, backend='auto',
                check_gates=True):
    """MetaLA attention.  q, g = log(alpha) <= 0: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V] in q's dtype
    (fp32, bf16, fp16; float64 too on the PyTorch path).

    The key is k = 1 - exp(g).  causal: o_t = scale q_t S_t with S_t = diag(alpha_t) S_{t-1} + k_t^T v_t.
    Otherwise o_i sums over every j, with the decay alpha_{j+1}..alpha_i for j <= i and alpha_i..alpha_{j-1}
    for j > i (gates g_bwd and keys 1 - exp(g_bwd) for j > i if g_bwd is given); the diagonal counts once.
    scale defaults to K ** -0.5.  mask [B, T] (True = real token): pads neither write nor decay and output 0.
    aug_weight [H, K] adds the self-augmentation sigmoid((q_t . (k_t * w)) v_t).
    backend: 'auto' (Triton on CUDA, PyTorch elsewhere), 'triton' or 'torch'.  Second-order gradients (a gradient
    penalty: create_graph=True, then a backward through the gradient) need 'torch': through the Triton kernels they
    raise.
    check_gates: raise if g > 0 anywhere (on CUDA a host sync; callers whose g = logsigmoid(.) may skip it).
    """
    if backend not in ('auto', 'triton', 'torch'):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == 'auto':
        backend = 'triton' if isinstance(q, torch.Tensor) and q.is_cuda else 'torch'
    _check(q, g, v, g_bwd, mask, aug_weight, check_gates, TORCH_PATH_DTYPES if backend == 'torch' else FLOAT_DTYPES)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if causal:
        g_bwd = None
    if mask is not None:
        pad = ~mask[:, :, None, None]
        g = g.masked_fill(pad, 0.0)
        g_bwd = g_bwd.masked_fill(pad, 0.0) if g_bwd is not None else None
    if backend == 'triton':
        from .chunk import chunk_metala
        o = chunk_metala(q, g, v, g_bwd=g_bwd, scale=scale, causal=causal)
    else:
        o = chunk_metala_torch(q, g, v, g_bwd=g_bwd, scale=scale, causal=causal)
    if aug_weight is not None:
        o = o + self_augmentation(q, g, v, aug_weight)
    if mask is not None:
        o = o * mask[:, :, None, None]
    return o


def metala_readout(o, q, g, v, gate, aug_weight=None, eps=1e-5, backend='auto'):
    """y = silu(gate) * LayerNorm_V(o + sigmoid((q . ((1 - e^g) * w)) v)) per token and head -> [B, T, H, V] in o's
    dtype.  o, v, gate: [B, T, H, V]; q, g: [B, T, H, K]; aug_weight w: [H, K] or None (no self-augmentation).
    backend: 'auto' (Triton on CUDA, PyTorch elsewhere), 'triton' or 'torch'."""
    B, T, H, V = o.shape
    for name, x, shape in (('q', q, (B, T, H, q.shape[-1])), ('g', g, q.shape), ('v', v, o.shape),
                           ('gate', gate, o.shape)):
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f'{name} must have shape {list(shape)} (o is [B, T, H, V] = {list(o.shape)}), '
                             f'got {tuple(x.shape)}')
    _check_aug_weight(aug_weight, H, q.shape[-1])
    _check_head_dims(q.shape[-1], V, 'o')
    if backend == 'auto':
        backend = 'triton' if o.is_cuda else 'torch'
    if backend == 'torch':
        return readout_torch(o, q, g, v, gate, aug_weight, eps)
    if o.dtype not in FLOAT_DTYPES:
        raise ValueError(f"o must be one of {FLOAT_DTYPES} for the Triton readout (float64: backend='torch'), "
                         f'got {o.dtype}')
    from .chunk import token_rows
    from .readout import readout
    has_aug = aug_weight is not None
    w = aug_weight if has_aug else o.new_empty(0)
    return readout(o.contiguous(), token_rows(q), g.contiguous(), token_rows(v), token_rows(gate), w, eps, has_aug)
