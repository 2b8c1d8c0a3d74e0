"""metala-vision: MetaLA attention vision backbones."""
from metala_kernels import metala_attn

__all__ = ['metala_attn']
