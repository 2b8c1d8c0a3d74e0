"""Layers: the MetaLA token mixer, its short convolution, and the pre-norm block."""
from .block import MLP_LAYERS, MetaLABlock
from .mixer import MetaLAMixer, ShortConv

__all__ = ['MLP_LAYERS', 'MetaLABlock', 'MetaLAMixer', 'ShortConv']
