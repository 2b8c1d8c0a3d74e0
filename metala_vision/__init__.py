"""metala-vision: MetaLA attention vision backbones.  Importing it registers the metala_vit models with timm;
`metala_vision.MetaLAForCausalLM` (or `import metala_vision.models.metala_lm`) loads the language model and
registers it with transformers' AutoConfig / AutoModelForCausalLM."""
from metala_kernels import metala_attn

from . import models
from .layers import MetaLAMixer
from .models import MetaLAViT

__all__ = ['metala_attn', 'MetaLAMixer', 'MetaLAViT', 'MetaLAConfig', 'MetaLAForCausalLM', 'LRAClassifier']


def __getattr__(name):
    if name in ('MetaLAConfig', 'MetaLAForCausalLM', 'LRAClassifier'):
        return getattr(models, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
