"""metala_kernels: MetaLA attention (bidirectional and causal), Triton kernels and PyTorch references."""
from .api import metala_attn, metala_readout
from .chunk_torch import chunk_metala_torch
from .naive import naive_parallel_metala, naive_recurrent_metala

__all__ = ['metala_attn', 'metala_readout', 'chunk_metala_torch', 'naive_parallel_metala', 'naive_recurrent_metala']
