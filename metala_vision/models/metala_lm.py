"""MetaLA causal language model with Hugging Face transformers conventions (config, save/load, generate()).

Architecture as released (ZiyanHuang11/MetaLA, gpt-neox metala_qv_selfaug.py), with RMSNorm for the block norms:

    x = x + MetaLA(RMSNorm(x))      causal 4-tap depthwise conv + SiLU, q / log a / v / output-gate projections,
                                    causal MetaLA attention + self-augmentation, per-head LayerNorm, silu(gate) * o
    x = x + SwiGLU(RMSNorm(x))      hidden = 8/3 hidden_size, rounded up to a multiple of `multiple_of`

Generation keeps O(1) memory per token: per layer the cache holds the recurrent state S [B, H, K, V] (fp32, or fp64
for a float64 model) and the last `conv_size` inputs of the short convolution [B, D, conv_size].  A prompt runs
through the chunked kernel, the final state is computed alongside, then each new token is one recurrent step
S = diag(a) S + k^T v, o = scale q S.  The cache is transformers' `DynamicCache` with a `LinearAttentionLayer` per
layer (config.layer_types = 'linear_attention'), which `generate()` builds on its own.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from metala_kernels import metala_attn
from metala_kernels.chunk_torch import key_from_gate
from metala_vision.layers import MetaLAMixer

__all__ = ['MetaLAConfig', 'MetaLAModel', 'MetaLAForCausalLM', 'MetaLAPreTrainedModel']

ATTN_BACKENDS = ('metala', 'fla')
FLA_CHUNK = 64  # chunk_gla's chunk_size
HEAD_DIMS = (32, 64, 128)  # v width per head; q / key-gate width is half of it, and both must be kernel dims


class MetaLAConfig(PreTrainedConfig):
    """MetaLA LM configuration.  The defaults match the byte-level tokenizer (metala_vision.data.text):
    259 ids, pad 0, eos 1.  attn_backend: 'metala' (our kernels: Triton on CUDA, PyTorch on CPU) or 'fla'
    (fla's chunk_gla, CUDA only) for prompts; decoding steps use the same PyTorch recurrence with either.
    decay_init: [t_min, t_max] initial memory lengths of the gates (MetaLAMixer), or None as released."""

    model_type = 'metala'

    vocab_size: int = 259
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    multiple_of: int = 256
    conv_size: int = 4
    gate_norm: float = 16.0
    decay_init: list[float] | None = None
    self_aug: bool = True
    attn_backend: str = 'metala'
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 1

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f'hidden_size={self.hidden_size} must be divisible by '
                             f'num_attention_heads={self.num_attention_heads}')
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim not in HEAD_DIMS:
            raise ValueError(f'head dim hidden_size / num_attention_heads = {head_dim} must be one of {HEAD_DIMS}')
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f'attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}')
        if self.intermediate_size is None:
            self.intermediate_size = self.multiple_of * math.ceil(8 * self.hidden_size / 3 / self.multiple_of)
        super().__post_init__(**kwargs)

    @property
    def layer_types(self):
        """Every layer keeps a recurrent (linear-attention) cache: DynamicCache builds LinearAttentionLayers."""
        return ['linear_attention'] * self.num_hidden_layers


def carry_state(q, g, v, state, scale):
    """Continues a chunk from the state S_0 before it (None: zeros).  q, g: [B, T, H, K]; v: [B, T, H, V];
    state: [B, H, K, V].  Returns (the extra output scale q_t (exp(G_t) * S_0) [B, T, H, V] or 0, the final state
    S_T = exp(G_T) * S_0 + sum_j exp(G_T - G_j) k_j^T v_j [B, H, K, V]) with G the cumulative sum of g; every
    exponent is <= 0.  Computed in fp32 (fp64 for float64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    g, v = g.to(acc), v.to(acc)
    decay_after = g.flip(1).cumsum(1).flip(1) - g                       # G_T - G_j = sum of g after token j
    final = torch.einsum('bthk,bthv->bhkv', key_from_gate(g) * decay_after.exp(), v)
    if state is None:
        return 0, final
    decay_upto = g.cumsum(1)                                            # G_t
    carried = scale * torch.einsum('bthk,bhkv->bthv', q.to(acc) * decay_upto.exp(), state)
    return carried, final + decay_upto[:, -1, :, :, None].exp() * state


def fla_chunk_gla(q, g, v, state, scale, output_final_state):
    """fla's chunk_gla with k = 1 - exp(g), on whole chunks of FLA_CHUNK tokens: q, g: [B, T, H, K]; v: [B, T, H, V];
    state: [B, H, K, V] or None -> (o [B, T, H, V], final state or None).  The pads appended (q = k = v = 0,
    g = 0) neither write nor decay, so the outputs and the final state are exact.  (fla 0.6's chunk_gla hit
    'misaligned address' on an H200 in fp32 at T = 20, K 32 / V 64, not at T = 60, 100 or 128: benchmarks/mqar.md.)"""
    from fla.ops.gla import chunk_gla
    T = q.shape[1]
    q, g, v = (F.pad(x, (0, 0, 0, 0, 0, -T % FLA_CHUNK)) for x in (q, g, v))
    o, state = chunk_gla(q, key_from_gate(g).to(q.dtype), v, g, scale=scale, initial_state=state,
                         output_final_state=output_final_state)
    return o[:, :T], state


def recurrent_step(q, g, v, state, scale):
    """One token of the recurrence S = diag(exp(g)) S + k^T v, o = scale q S.  q, g: [B, H, K]; v: [B, H, V];
    state: [B, H, K, V] (its dtype is the compute dtype) -> (o [B, H, V] in state's dtype, new state)."""
    g = g.to(state.dtype)
    state = g.exp()[..., None] * state + key_from_gate(g)[..., None] * v.to(state.dtype)[..., None, :]
    return scale * torch.einsum('bhk,bhkv->bhv', q.to(state.dtype), state), state


class MetaLAMLP(nn.Module):
    """SwiGLU: x [..., D] -> down(silu(gate(x)) * up(x)) [..., D], no biases."""

    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MetaLADecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + MetaLA(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); x: [B, T, D]."""

    def __init__(self, config: MetaLAConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.conv_size, self.attn_backend = layer_idx, config.conv_size, config.attn_backend
        self.attn_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = MetaLAMixer(config.hidden_size, config.num_attention_heads, short_conv='causal',
                                conv_size=config.conv_size, causal=True, gate_norm=config.gate_norm,
                                decay_init=config.decay_init,
                                self_aug=config.self_aug, norm_eps=config.norm_eps)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MetaLAMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x, mask=None, cache=None):
        """x: [B, T, D]; mask: [B, T] bool (True = real token) or None; cache: the model's Cache or None."""
        x = x + self.mix(self.attn_norm(x), mask, cache)
        return x + self.mlp(self.mlp_norm(x))

    def mix(self, x, mask, cache):
        """Causal MetaLA token mixing of x [B, T, D] -> [B, T, D], continuing from this layer's cached state and
        conv window and updating them when cache is given.  Pads (mask False) neither write nor decay: they reach
        no real token."""
        mixer, T = self.attn, x.shape[1]
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if cache is None:
            x = mixer.short_conv(x)
        else:  # the conv sees the cached last conv_size inputs before this chunk: [B, D, conv_size + T]
            window = cache.update_conv_state(x.transpose(1, 2), self.layer_idx, conv_kernel_size=self.conv_size)
            x = mixer.short_conv.last(window) if T == 1 else mixer.short_conv(window.transpose(1, 2))[:, -T:]
        q, g, _, v, out_gate = mixer.project(x)
        if mask is not None:
            g = g.masked_fill(~mask[:, :, None, None], 0.0)
        scale = mixer.key_dim ** -0.5
        state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        if state is not None and T == 1:
            o, state = recurrent_step(q[:, 0], g[:, 0], v[:, 0], state, scale)
            o = o[:, None]
        elif self.attn_backend == 'fla':
            o, state = fla_chunk_gla(q, g, v, state, scale, output_final_state=cache is not None)
        else:
            o = metala_attn(q, g, v, causal=True, scale=scale, backend=mixer.backend,
                            check_gates=False)  # g = logsigmoid(.) <= 0
            if cache is not None:
                carried, state = carry_state(q, g, v, state, scale)
                o = o + carried
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        return mixer.readout(o.to(v.dtype), q, g, v, out_gate)


class MetaLAPreTrainedModel(PreTrainedModel):
    config_class = MetaLAConfig
    base_model_prefix = 'model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['MetaLADecoderLayer']
    _is_stateful = True

    def _init_weights(self, module):
        """transformers' defaults (normal(initializer_range) linears, convs and embeddings; unit norms), a zero
        self-augmentation weight, as in the released model, and the gate biases of decay_init (if set) after
        the mixer's linears were initialised (apply visits children first); a zero output-gate bias."""
        super()._init_weights(module)
        if isinstance(module, MetaLAMixer):
            init.zeros_(module.out_gate_bias)
            if module.aug_weight is not None:
                init.zeros_(module.aug_weight)
            module.init_gate_bias(init.copy_)


class MetaLAModel(MetaLAPreTrainedModel):
    """Token ids [B, T] -> final-normed hidden states [B, T, D]."""

    def __init__(self, config: MetaLAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MetaLADecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache: Cache | None = None,
                use_cache=None, **kwargs):
        """input_ids [B, T] (or inputs_embeds [B, T, D]); attention_mask [B, T_past + T] (1 = real token; left
        padding for batched prompts); cache: continue from it and update it (use_cache builds a new one)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError('pass exactly one of input_ids and inputs_embeds')
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        T = inputs_embeds.shape[1]
        mask = attention_mask[:, -T:].bool() if attention_mask is not None else None
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, mask, cache if use_cache else None)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), cache=cache if use_cache else None)


class MetaLAForCausalLM(MetaLAPreTrainedModel, GenerationMixin):
    """MetaLA LM: token ids [B, T] -> next-token logits [B, T, vocab_size]."""

    _tied_weights_keys = {'lm_head.weight': 'model.embed_tokens.weight'}

    def __init__(self, config: MetaLAConfig):
        super().__init__(config)
        self.model = MetaLAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache: Cache | None = None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        """labels [B, T]: the input ids (shifted inside; -100 = ignored) for the mean next-token loss.
        logits_to_keep: int n > 0 keeps the last n positions' logits (generate() passes 1)."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                             cache=cache, use_cache=use_cache)
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


AutoConfig.register(MetaLAConfig.model_type, MetaLAConfig, exist_ok=True)
AutoModel.register(MetaLAConfig, MetaLAModel, exist_ok=True)
AutoModelForCausalLM.register(MetaLAConfig, MetaLAForCausalLM, exist_ok=True)
