"""MetaLA-ViT: a Vision Transformer whose token mixer is bidirectional MetaLA linear attention.

Linear in the number of tokens: the mixer (metala_vision.layers.MetaLAMixer) scans the patch grid in raster order
both ways with data-dependent decays, after a depthwise 3x3 convolution on the grid, so the model needs no position
embedding and takes any image size divisible by the patch (pos_embed=True adds a learned absolute one).

Widths and depths follow DeiT (T: 192 / 3 heads, S: 384 / 6, B: 768 / 12; depth 12; patch 16).
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed, resample_abs_pos_embed, resample_patch_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint

from metala_vision.layers import MetaLABlock, MetaLAMixer

__all__ = ['MetaLAViT']

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _check_global_pool(global_pool, class_token):
    if global_pool not in ('', 'avg', 'token'):
        raise ValueError(f"global_pool must be 'avg', 'token' or '', got {global_pool!r}")
    if global_pool == 'token' and not class_token:
        raise ValueError("global_pool='token' needs class_token=True")


class MetaLAViT(nn.Module):
    """MetaLA Vision Transformer: images [B, in_chans, H, W] -> logits [B, num_classes].

    H and W: any multiple of patch_size.  global_pool: 'avg' (over patch tokens, the default), 'token' (needs
    class_token=True) or '' (forward returns the tokens).  mixer options (separate_bwd_gates, gate_norm, decay_init,
    self_aug, backend) pass through to MetaLAMixer.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, global_pool='avg',
                 embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, mlp_layer='gelu', class_token=False,
                 pos_embed=False, dynamic_img_size=True, init_values=None, drop_rate=0.0, pos_drop_rate=0.0,
                 proj_drop_rate=0.0, drop_path_rate=0.0, separate_bwd_gates=False, gate_norm=16.0, decay_init=None,
                 self_aug=True, backend='auto'):
        super().__init__()
        _check_global_pool(global_pool, class_token)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, output_fmt='NHWC',
                                      strict_img_size=False)
        self.patch_size = self.patch_embed.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        grid_h, grid_w = self.patch_embed.grid_size
        # the absolute embedding covers the patch grid only; a class token gets none (DeiT-III style)
        self.pos_embed = nn.Parameter(torch.randn(1, grid_h * grid_w, embed_dim) * .02) if pos_embed else None
        self.pos_drop = nn.Dropout(pos_drop_rate)

        drop_path = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            MetaLABlock(embed_dim, num_heads, mlp_ratio, mlp_layer, drop_path[i], init_values, proj_drop_rate,
                        short_conv='2d', separate_bwd_gates=separate_bwd_gates, gate_norm=gate_norm,
                        decay_init=decay_init, self_aug=self_aug, backend=backend)
            for i in range(depth)])
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=self.patch_size[0])
                             for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, MetaLAMixer):  # after its linears (apply visits children first)
            m.init_gate_bias()

    @torch.jit.ignore
    def no_weight_decay(self):
        """Position embedding, class token and the per-head self-augmentation weights."""
        return {'pos_embed', 'cls_token'} | {n for n, _ in self.named_parameters() if n.endswith('.aug_weight')}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            _check_global_pool(global_pool, self.cls_token is not None)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images [B, C, H, W] -> tokens [B, prefix + gh * gw, dim] and the grid (gh, gw)."""
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(f'image height and width must be multiples of the patch size {ph}x{pw}, got {H}x{W}')
        x = self.patch_embed(x)
        B, gh, gw, C = x.shape
        # PatchEmbed's NHWC output is a permuted view of its NCHW convolution (unless the images are channels_last):
        # made contiguous here, or every residual add, LayerNorm and gradient of the blocks runs on strided memory
        x = x.reshape(B, gh * gw, C).contiguous()
        if self.pos_embed is not None:
            if (gh, gw) != self.patch_embed.grid_size:
                if not self.dynamic_img_size:
                    raise ValueError(f'image size {H}x{W} differs from img_size {self.patch_embed.img_size}: '
                                     'create the model with dynamic_img_size=True or that img_size')
                x = x + resample_abs_pos_embed(self.pos_embed, (gh, gw), self.patch_embed.grid_size,
                                               num_prefix_tokens=0)
            else:
                x = x + self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        return self.pos_drop(x), (gh, gw)

    def _block(self, blk, x, grid_size: Tuple[int, int]):
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid_size, self.num_prefix_tokens)
        return blk(x, grid_size, self.num_prefix_tokens)

    def forward_features(self, x):
        """Images [B, C, H, W] -> normalised tokens [B, prefix + H/p * W/p, dim]."""
        x, grid_size = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x, grid_size)
        return self.norm(x)

    def forward_intermediates(self, x, indices: Optional[Union[int, List[int]]] = None, return_prefix_tokens=False,
                              norm=False, stop_early=False, output_fmt='NCHW', intermediates_only=False):
        """Images [B, C, H, W] -> (final tokens, [B, dim, H/p, W/p] maps of the blocks in `indices`), as timm's ViT:
        indices = last n blocks if int, all if None; output_fmt 'NCHW' or 'NLC'."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, (gh, gw) = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, (gh, gw))
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [y.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm=False, prune_head=True):
        """Drops the blocks after the last of `indices` (and the norm / head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens [B, N, dim] -> logits [B, num_classes] (pooled features [B, dim] if pre_logits)."""
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict, model):
    """Our checkpoints (plain, wrapped in 'model' / 'state_dict' / 'state_dict_ema', or saved from a DDP or compiled
    model) -> the model's state dict; resizes the position embedding and the patch embedding to the model's."""
    for key in ('model', 'state_dict_ema', 'state_dict'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out = {}
    for name, value in state_dict.items():
        for prefix in ('module.', '_orig_mod.'):
            name = name[len(prefix):] if name.startswith(prefix) else name
        if name == 'pos_embed' and model.pos_embed is not None and value.shape != model.pos_embed.shape:
            side = int(value.shape[1] ** 0.5)
            value = resample_abs_pos_embed(value, model.patch_embed.grid_size, (side, side), num_prefix_tokens=0)
        elif name == 'patch_embed.proj.weight' and value.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
            value = resample_patch_embed(value, model.patch_embed.proj.weight.shape[-2:])
        out[name] = value
    return out


def _create_metala_vit(variant, pretrained=False, **kwargs):
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(MetaLAViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)


def _cfg(**kwargs):
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.875,
        'interpolation': 'bicubic', 'fixed_input_size': False, 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'metala_vit_t': _cfg(),
    'metala_vit_s': _cfg(),
    'metala_vit_b': _cfg(),
    'metala_vit_t_p4_32': _cfg(num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR10_MEAN,
                               std=CIFAR10_STD),
})


@register_model
def metala_vit_t(pretrained=False, **kwargs) -> MetaLAViT:
    model_args = dict(embed_dim=192, depth=12, num_heads=3)
    return _create_metala_vit('metala_vit_t', pretrained, **dict(model_args, **kwargs))


@register_model
def metala_vit_s(pretrained=False, **kwargs) -> MetaLAViT:
    model_args = dict(embed_dim=384, depth=12, num_heads=6)
    return _create_metala_vit('metala_vit_s', pretrained, **dict(model_args, **kwargs))


@register_model
def metala_vit_b(pretrained=False, **kwargs) -> MetaLAViT:
    model_args = dict(embed_dim=768, depth=12, num_heads=12)
    return _create_metala_vit('metala_vit_b', pretrained, **dict(model_args, **kwargs))


@register_model
def metala_vit_t_p4_32(pretrained=False, **kwargs) -> MetaLAViT:
    """For 32x32 images (CIFAR-sized): patch 4, an 8x8 grid of 64 tokens."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_metala_vit('metala_vit_t_p4_32', pretrained, **dict(model_args, **kwargs))
