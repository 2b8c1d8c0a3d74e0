"""short_conv2d (the image mixer's depthwise k x k convolution + SiLU): each backend against a float64 convolution,
outputs and gradients; the Triton kernels run compiled on CUDA and under TRITON_INTERPRET=1 on the CPU."""
import pytest
import torch
import torch.nn.functional as F

from metala_kernels import short_conv2d
from metala_vision.layers import MetaLAMixer, ShortConv
from test_ops import BACKENDS, DEVICE, NEEDS_TRITON, TOL, rel_err


def reference(x, weight, grid_size):
    """float64 silu(conv2d) on the [B, C, gh, gw] image of tokens x [B, gh * gw, C]."""
    B, N, C = x.shape
    image = x.double().transpose(1, 2).reshape(B, C, *grid_size)
    z = F.conv2d(image, weight.double(), padding=weight.shape[-1] // 2, groups=C)
    return F.silu(z.flatten(2).transpose(1, 2))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('grid_size, C, k, prefix', [((14, 14), 40, 3, 1), ((3, 5), 16, 3, 0), ((1, 1), 8, 3, 0),
                                                      ((9, 4), 96, 5, 2), ((2, 70), 24, 3, 0)])
def test_matches_float64(backend, dtype, grid_size, C, k, prefix):
    """Outputs and the gradients of x and the weight, the tokens a view after `prefix` leading ones (read in
    place); channels not a power of 2, grids wider than a block of tokens, 5 x 5 taps."""
    gen = torch.Generator().manual_seed(C * k + prefix)
    B, N = 3, grid_size[0] * grid_size[1]
    x64 = torch.randn(B, prefix + N, C, generator=gen, dtype=torch.float64)
    w64 = torch.randn(C, 1, k, k, generator=gen, dtype=torch.float64) / k
    dy = torch.randn(B, N, C, generator=gen, dtype=torch.float64)
    x64.requires_grad_(), w64.requires_grad_()
    reference(x64[:, prefix:], w64, grid_size).backward(dy)
    x = x64.detach().to(DEVICE, dtype).requires_grad_()
    w = w64.detach().to(DEVICE, torch.float32).requires_grad_()  # a parameter stays fp32
    y = short_conv2d(x[:, prefix:], w, grid_size, backend=backend)
    assert y.dtype == dtype and y.shape == (B, N, C)
    y.backward(dy.to(DEVICE, dtype))
    assert rel_err(y.cpu(), reference(x64[:, prefix:], w64, grid_size)) < TOL[dtype]
    assert rel_err(x.grad.cpu(), x64.grad) < TOL[dtype]
    assert rel_err(w.grad.cpu(), w64.grad) < TOL[dtype]
    assert (x.grad[:, :prefix] == 0).all()


@NEEDS_TRITON
def test_weight_gradient_keeps_the_parameter_strides():
    """ShortConv's weight has channels-last strides (C-stride k*k, 1, k, 1) so that DDP's buckets need no copy; the
    kernels' gradient keeps them, and equals the PyTorch path's."""
    conv = ShortConv(32, '2d', 3).to(DEVICE)
    x = torch.randn(2, 1 + 20, 32, device=DEVICE)
    grads = []
    for backend in ('torch', 'triton'):
        conv.backend, conv.conv.weight.grad = backend, None
        conv(x, grid_size=(4, 5), num_prefix=1).square().sum().backward()
        grads.append(conv.conv.weight.grad)
    assert grads[1].stride() == conv.conv.weight.stride() == (9, 1, 3, 1)
    assert rel_err(grads[1].cpu(), grads[0].cpu()) < TOL[torch.float32]


@NEEDS_TRITON
def test_autocast_casts_the_tokens():
    """Under autocast the kernels take x in its dtype (as a convolution's input) and return it; within that dtype's
    tolerance of the fp32 result."""
    x = torch.randn(2, 30, 16, device=DEVICE)
    w = torch.randn(16, 1, 3, 3, device=DEVICE) / 3
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = short_conv2d(x, w, (5, 6), backend='triton')
    assert y.dtype == torch.bfloat16
    assert rel_err(y.cpu(), reference(x.cpu(), w.cpu(), (5, 6))) < TOL[torch.bfloat16]


@NEEDS_TRITON
def test_mixer_backends_agree():
    """A MetaLAMixer with the 2-D short conv gives the same output and gradients on both backends (same weights)."""
    torch.manual_seed(0)
    mixer = MetaLAMixer(64, 2).to(DEVICE)
    x = torch.randn(2, 1 + 12, 64, device=DEVICE, requires_grad=True)
    results = []
    for backend in ('torch', 'triton'):
        mixer.backend = mixer.short_conv.backend = backend
        x.grad = mixer.short_conv.conv.weight.grad = None
        y = mixer(x, grid_size=(3, 4), num_prefix=1)
        y.square().sum().backward()
        results.append((y.detach(), x.grad, mixer.short_conv.conv.weight.grad))
    for ours, ref in zip(*results):
        assert rel_err(ours.cpu(), ref.cpu()) < 1e-4


@NEEDS_TRITON
def test_torch_compile_fullgraph():
    """torch.compile keeps the kernels in one graph (a custom op) and matches eager."""
    x = torch.randn(2, 20, 16, device=DEVICE)
    w = torch.randn(16, 1, 3, 3, device=DEVICE)
    fn = torch.compile(lambda x, w: short_conv2d(x, w, (4, 5), backend='triton'), backend='aot_eager',
                       fullgraph=True)
    assert rel_err(fn(x, w).cpu(), short_conv2d(x, w, (4, 5), backend='triton').cpu()) < 1e-6


@pytest.mark.parametrize('x_shape, w_shape, grid_size, match', [
    ((2, 20, 16, 1), (16, 1, 3, 3), (4, 5), r'x must have shape \[B, N, C\]'),
    ((2, 20, 16), (16, 1, 3, 3), (4, 4), r'grid_size \(4, 4\) does not match'),
    ((2, 20, 16), (8, 1, 3, 3), (4, 5), r'weight must have shape \[C, 1, k, k\] = \[16, 1, k, k\]'),
    ((2, 20, 16), (16, 1, 2, 2), (4, 5), 'k odd'),
])
def test_bad_input_is_named(x_shape, w_shape, grid_size, match):
    with pytest.raises(ValueError, match=match):
        short_conv2d(torch.randn(x_shape), torch.randn(w_shape), grid_size)
