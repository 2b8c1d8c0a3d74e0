"""Models registered with timm on import: metala_vit_t, metala_vit_s, metala_vit_b, metala_vit_t_p4_32."""
from .metala_vit import MetaLAViT

__all__ = ['MetaLAViT']
