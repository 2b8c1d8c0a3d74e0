"""Models.  Importing this registers the vision models with timm (metala_vit_t, metala_vit_s, metala_vit_b,
metala_vit_t_p4_32); `metala_lm` (the causal LM, registered with transformers' Auto classes on import) and
`lra` (the LRA classifier) load on first use, so timm users do not pay for importing transformers."""
import importlib

from .metala_vit import MetaLAViT

_LAZY = {'MetaLAConfig': 'metala_lm', 'MetaLAModel': 'metala_lm', 'MetaLAForCausalLM': 'metala_lm',
         'LRAClassifier': 'lra'}

__all__ = ['MetaLAViT', *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
