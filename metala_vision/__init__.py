"""metala-vision: MetaLA attention vision backbones.  Importing it registers the metala_vit models with timm."""
from metala_kernels import metala_attn

from .layers import MetaLAMixer
from .models import MetaLAViT

__all__ = ['metala_attn', 'MetaLAMixer', 'MetaLAViT']
