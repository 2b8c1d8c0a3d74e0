"""MetaLA-ViT as a timm model: the checks timm's own tests/test_models.py applies to every model, plus ours."""
import math
import socket

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

import metala_vision  # noqa: F401  (registers the models)
from metala_vision.layers import MetaLAMixer, ShortConv
from test_ops import NEEDS_TRITON

MODELS = timm.list_models('metala_vit_*')
TINY = dict(depth=2)  # keeps CPU tests quick where the depth does not matter


def _input(model, batch=2, size=None):
    c, h, w = model.pretrained_cfg['input_size']
    size = size or min(h, 64)
    return torch.randn(batch, c, size, size)


def test_all_variants_registered():
    assert set(MODELS) == {'metala_vit_t', 'metala_vit_s', 'metala_vit_b', 'metala_vit_t_p4_32'}


@pytest.mark.parametrize('name', MODELS)
def test_forward(name):
    model = timm.create_model(name).eval()
    x = _input(model, batch=1, size=model.pretrained_cfg['input_size'][-1])
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, model.pretrained_cfg['num_classes'])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', MODELS)
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42, **TINY).train()
    out = model(_input(model))
    out.mean().backward()
    assert out.shape == (2, 42)
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f'{n} gets a zero gradient'


@pytest.mark.parametrize('name', MODELS)
def test_default_cfg(name):
    model = timm.create_model(name, **TINY).eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'license'):
        assert key in cfg, key
    assert len(cfg['mean']) == len(cfg['std']) == cfg['input_size'][0] == 3
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state
    x = _input(model)
    feats = model.forward_features(x)
    assert feats.shape[-1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier() is model.head
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(0, '')
    assert model(x).shape == feats.shape
    model.reset_classifier(7, 'avg')
    assert model(x).shape == (2, 7)


def test_features_only_maps():
    model = timm.create_model('metala_vit_t', features_only=True, out_indices=(1, 3), depth=4).eval()
    assert model.feature_info.channels() == [192, 192] and model.feature_info.reduction() == [16, 16]
    maps = model(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 192, 4, 6)] * 2


def test_forward_intermediates_matches_forward_features():
    model = timm.create_model('metala_vit_t_p4_32', depth=3, class_token=True, global_pool='token').eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [tuple(t.shape) for t in inter] == [(2, 192, 8, 12)] * 3
        nlc = model.forward_intermediates(x, indices=[0], output_fmt='NLC', intermediates_only=True)
        assert nlc[0].shape == (2, 96, 192)
        torch.testing.assert_close(nlc[0], inter[0].flatten(2).transpose(1, 2))
        pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, intermediates_only=True)
        assert pairs[0][1].shape == (2, 1, 192)
        last = model.forward_intermediates(x, indices=1, norm=True, stop_early=True, intermediates_only=True)
        torch.testing.assert_close(last[0].flatten(2).transpose(1, 2), final[:, 1:])


def test_prune_intermediate_layers():
    model = timm.create_model('metala_vit_t_p4_32', depth=4)
    assert model.prune_intermediate_layers([1]) == [1]
    assert len(model.blocks) == 2 and model.num_classes == 0


def test_dynamic_img_size_and_clear_error():
    model = timm.create_model('metala_vit_t_p4_32', **TINY).eval()
    assert model(torch.randn(1, 3, 48, 24)).shape == (1, 10)
    with pytest.raises(ValueError, match='multiples of the patch size 4x4'):
        model(torch.randn(1, 3, 30, 32))
    fixed = timm.create_model('metala_vit_t_p4_32', pos_embed=True, dynamic_img_size=False, **TINY)
    with pytest.raises(ValueError, match='dynamic_img_size=True'):
        fixed(torch.randn(1, 3, 48, 48))
    resized = timm.create_model('metala_vit_t_p4_32', pos_embed=True, **TINY)
    assert resized(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_channels_last_input():
    model = timm.create_model('metala_vit_t_p4_32', **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


def test_tokens_enter_the_blocks_contiguous():
    """PatchEmbed's NHWC output is a permuted view; the blocks must get contiguous tokens (a strided residual stream
    makes every add, LayerNorm and gradient of the blocks take the slow strided path on a GPU)."""
    model = timm.create_model('metala_vit_t_p4_32', **TINY)
    tokens, _ = model._embed(torch.randn(2, 3, 32, 32))
    assert tokens.is_contiguous()


def _saved_tensor_count(model, x):
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    return count


def test_grad_checkpointing_saves_less_and_matches():
    torch.manual_seed(0)
    model = timm.create_model('metala_vit_t_p4_32', depth=4).train()
    x = torch.randn(2, 3, 32, 32)
    plain = _saved_tensor_count(model, x)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    checkpointed = _saved_tensor_count(model, x)
    assert checkpointed < plain / 4, (checkpointed, plain)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_gradients_come_laid_out_like_their_parameters():
    """DDP buckets gradients in the parameters' layout: a mismatch (the channels_last conv) warns and copies."""
    model = timm.create_model('metala_vit_t_p4_32', **TINY)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.stride() == p.stride(), name


def test_layer_decay_groups_and_no_weight_decay():
    model = timm.create_model('metala_vit_t_p4_32', depth=3, pos_embed=True)
    nwd = model.no_weight_decay()
    assert {'pos_embed', 'blocks.0.attn.aug_weight', 'blocks.2.attn.aug_weight'} <= nwd
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    scales = sorted({g['lr_scale'] for g in opt.param_groups})
    assert len(scales) == 3 + 2  # stem, 3 blocks, final norm/head
    for group in opt.param_groups:
        for p in group['params']:
            if p is model.pos_embed or p is model.blocks[0].attn.aug_weight:
                assert group['weight_decay'] == 0.0


def test_pretrained_from_our_own_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('pretrained=True tried to reach the network')

    monkeypatch.setattr(socket.socket, 'connect', no_network)
    model = timm.create_model('metala_vit_t_p4_32', pos_embed=True, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    file = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(model.state_dict(), str(file))
    loaded = timm.create_model('metala_vit_t_p4_32', pos_embed=True, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(file)), **TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # a training checkpoint: wrapped, saved from DDP; new head, larger images (position embedding resized)
    pth = tmp_path / 'checkpoint.pth'
    torch.save({'model': {'module.' + k: v for k, v in model.state_dict().items()}}, pth)
    bigger = timm.create_model('metala_vit_t_p4_32', pos_embed=True, img_size=48, num_classes=3, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(pth)), **TINY)
    assert bigger.pos_embed.shape == (1, 144, 192) and bigger.head.out_features == 3
    torch.testing.assert_close(bigger.blocks[1].attn.in_proj.weight, model.blocks[1].attn.in_proj.weight)


@pytest.mark.parametrize('backend', ['auto', pytest.param('triton', marks=NEEDS_TRITON)])
def test_torch_compile_has_no_graph_break(backend):
    """One graph, forward and backward; with backend='triton' the operator and the readout are custom ops in it."""
    model = timm.create_model('metala_vit_t_p4_32', backend=backend, **TINY)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().mean().backward()
    for grad, p in zip(grads, model.parameters()):
        torch.testing.assert_close(grad, p.grad)


def test_torch_jit_trace():
    """torch.jit.script is not supported (the operator picks its kernel in Python, Triton cannot be scripted);
    tracing on the CPU path is, and so is torch.compile."""
    model = timm.create_model('metala_vit_t_p4_32', **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x))


def test_overfits_a_fixed_batch():
    """A small model memorises 32 random images with random labels: training really trains."""
    torch.manual_seed(0)
    model = timm.create_model('metala_vit_t_p4_32', embed_dim=64, num_heads=2, depth=2, num_classes=10)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).float().mean().item()
    assert accuracy == 1.0, (accuracy, loss.item())


@pytest.mark.parametrize('short_conv', ['1d', 'causal', 'none'])
def test_mixer_padding_invariance(short_conv):
    """Padded tokens reach no real token, through the short conv nor either scan direction."""
    torch.manual_seed(0)
    mixer = MetaLAMixer(64, 2, short_conv=short_conv, causal=short_conv == 'causal').eval()
    x = torch.randn(2, 11, 64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        y = mixer(x, mask=mask)
        x2 = x.clone()
        x2[1, 7:] = 100 * torch.randn(4, 64)
        y2 = mixer(x2, mask=mask)
    torch.testing.assert_close(y[mask], y2[mask])
    torch.testing.assert_close(y[1, :7], mixer(x[1:, :7])[0].detach())


def test_short_conv_decoding_step_is_the_last_output():
    """ShortConv.last (one decoding step on a window of past inputs) equals the causal conv's last output."""
    torch.manual_seed(0)
    conv = ShortConv(48, 'causal', 4)
    window = torch.randn(3, 48, 6)  # [B, C, time], oldest first
    with torch.no_grad():
        torch.testing.assert_close(conv.last(window), conv(window.transpose(1, 2))[:, -1:])
    with pytest.raises(ValueError, match="last\\(\\) is the causal conv's decoding step"):
        ShortConv(48, '1d', 3).last(window)


@pytest.mark.parametrize('separate_bwd_gates', [False, True])
def test_mixer_projections_as_released(separate_bwd_gates):
    """project() is q = x Wq, log a = logsigmoid(x Wa + b) / gate_norm (b: decay_init), v = x Wv, out gate x Wg + b,
    read off the one in-projection: each part has its own rows, and only the gates and the out gate a bias."""
    torch.manual_seed(0)
    mixer = MetaLAMixer(64, 2, short_conv='1d', separate_bwd_gates=separate_bwd_gates, decay_init=(2, 50))
    with torch.no_grad():
        mixer.out_gate_bias.normal_()
        x = torch.randn(2, 5, 64)
        q, g, g_bwd, v, out_gate = mixer.project(x)
        rows = mixer.in_proj.weight.split(list(mixer.in_widths.values()))
        gate_rows = rows[2].chunk(2 if separate_bwd_gates else 1)
        gate_biases = mixer.gate_bias.chunk(len(gate_rows))
        torch.testing.assert_close(q.flatten(2), x @ rows[0].T)
        torch.testing.assert_close(v.flatten(2), x @ rows[1].T)
        torch.testing.assert_close(out_gate, x @ rows[3].T + mixer.out_gate_bias)
        for log_decay, w, b in zip((g, g_bwd), gate_rows, gate_biases):
            torch.testing.assert_close(log_decay.flatten(2), F.logsigmoid(x @ w.T + b) / mixer.gate_norm)
    assert (g_bwd is None) != separate_bwd_gates and q.shape == g.shape == (2, 5, 2, 16) and v.shape == (2, 5, 2, 32)


def test_causal_mixer_ignores_the_future():
    torch.manual_seed(0)
    mixer = MetaLAMixer(64, 2, short_conv='causal', causal=True, separate_bwd_gates=True).eval()
    assert mixer.in_widths['gate'] == 32  # one scan's gates
    x = torch.randn(1, 9, 64)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 4, 64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x)[:, :5], mixer(x2)[:, :5])


def test_separate_backward_gates_change_the_output():
    torch.manual_seed(0)
    model = timm.create_model('metala_vit_t_p4_32', separate_bwd_gates=True, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        attn = model.blocks[0].attn
        start = attn.in_widths['q'] + attn.in_widths['v'] + attn.in_widths['gate'] // 2  # the backward scan's
        attn.in_proj.weight[start:start + attn.in_widths['gate'] // 2].mul_(5)
        assert not torch.allclose(before, model(x))


def initial_memory_lengths(mixer):
    """-1 / log a of every gate channel at a zero input: [H * K] (and the backward scan's, if separate)."""
    x = torch.zeros(1, 1, mixer.num_heads * mixer.head_dim)
    with torch.no_grad():
        _, g, g_bwd, _, _ = mixer.project(x)
    return [(-1 / log_decay).flatten().double() for log_decay in (g, g_bwd) if log_decay is not None]


def expected_memory_lengths(t_min, t_max, mixer):
    return torch.logspace(math.log10(t_min), math.log10(t_max), mixer.key_dim, dtype=torch.float64).repeat(
        mixer.num_heads)


def test_decay_init_spreads_the_initial_memory_lengths():
    """decay_init=(t_min, t_max): each head's gate channels start with memory lengths log-spaced over the range,
    in both scans, and the model's own weight init (which zeroes biases) leaves them so; without it the gates have
    no bias (as released) and every channel starts at gate_norm / log 2 tokens."""
    model = timm.create_model('metala_vit_t_p4_32', decay_init=(2, 300), separate_bwd_gates=True, **TINY)
    for blk in model.blocks:
        for lengths in initial_memory_lengths(blk.attn):
            torch.testing.assert_close(lengths, expected_memory_lengths(2, 300, blk.attn), rtol=1e-5, atol=0)
    plain = MetaLAMixer(64, 2, short_conv='1d')
    assert plain.gate_bias is None
    torch.testing.assert_close(initial_memory_lengths(plain)[0],
                               torch.full((32,), 16 / math.log(2), dtype=torch.float64))
    for bad in [(0, 10), (10, 2), (5,)]:
        with pytest.raises(ValueError, match='decay_init'):
            MetaLAMixer(64, 2, decay_init=bad)


def test_bad_construction_errors():
    with pytest.raises(ValueError, match="global_pool='token' needs class_token"):
        timm.create_model('metala_vit_t_p4_32', global_pool='token')
    with pytest.raises(ValueError, match='mlp_layer'):
        timm.create_model('metala_vit_t_p4_32', mlp_layer='relu')
    with pytest.raises(ValueError, match='head dims'):
        timm.create_model('metala_vit_t_p4_32', embed_dim=96, num_heads=4, **TINY)(torch.randn(1, 3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA (the Triton path)')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    torch.manual_seed(0)
    model = timm.create_model('metala_vit_s', separate_bwd_gates=True, **TINY).eval()
    for p in model.parameters():  # non-trivial gates and augmentation
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        model.cuda()
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            out = model(x.cuda()).float().cpu()
    err = (out - ref).norm() / ref.norm()
    assert err < (2e-3 if dtype == torch.float32 else 3e-2), err
