"""The pre-norm MetaLA block shared by the vision and LRA models."""
from functools import partial
from typing import Optional, Tuple

from torch import nn

from timm.layers import DropPath, LayerScale, Mlp, SwiGLU

from .mixer import MetaLAMixer

MLP_LAYERS = {'gelu': Mlp, 'swiglu': partial(SwiGLU, norm_layer=None)}


class MetaLABlock(nn.Module):
    """Pre-norm block: x + MetaLA(norm(x)), then x + MLP(norm(x)); x: [B, N, dim]."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, mlp_layer='gelu', drop_path=0.0, init_values=None,
                 proj_drop=0.0, norm_layer=nn.LayerNorm, **mixer_kwargs):
        super().__init__()
        if mlp_layer not in MLP_LAYERS:
            raise ValueError(f'mlp_layer must be one of {list(MLP_LAYERS)}, got {mlp_layer!r}')
        self.norm1 = norm_layer(dim)
        self.attn = MetaLAMixer(dim, num_heads, proj_drop=proj_drop, **mixer_kwargs)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        # SwiGLU keeps the parameter count of the GELU MLP: hidden = 2/3 of mlp_ratio * dim
        hidden = int(dim * mlp_ratio * (2 / 3 if mlp_layer == 'swiglu' else 1))
        self.mlp = MLP_LAYERS[mlp_layer](in_features=dim, hidden_features=hidden, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, grid_size: Optional[Tuple[int, int]] = None, num_prefix: int = 0, mask=None,
                gate_lower_bound=None):
        """x: [B, N, dim]; grid_size / num_prefix for a 2-D short conv; mask [B, N] (True = real token);
        gate_lower_bound [dim // 2]: the mixer's floor of the decays (MetaLAMixer.log_decay), or None."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), grid_size, num_prefix, mask, gate_lower_bound)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
