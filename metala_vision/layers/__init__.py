"""Layers: the MetaLA token mixer and its short convolution."""
from .mixer import MetaLAMixer, ShortConv

__all__ = ['MetaLAMixer', 'ShortConv']
