"""The Transformer's hyperparameters (model.transformer in a config) and their checks."""

import dataclasses

import jax
import jax.numpy as jnp

from bigjax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'swiglu', 'geglu')  # geglu: tanh-GELU(gate) * up (Gemma)
POSITIONS = ('learned', 'rope')
ROPE_SCALINGS = ('none', 'linear', 'llama3', 'yarn')  # as transformers' rope_type computes them
ATTENTIONS = ('einops', 'dot_product', 'fused')
POOLS = ('cls', 'mean', 'last')
REMAT_POLICIES = {  # model.transformer.remat -> what a block keeps for the backward pass
    'block': None,  # only its input: everything else is recomputed
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # the projections' outputs
}
REMATS = ('none', *REMAT_POLICIES)
PROJECTIONS = ('qkv', 'out', 'up', 'gate', 'down')  # a block's projections, by name


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters shared by every layer (hashable, so modules can hold it)."""

    width: int = 256
    depth: int = 4
    num_heads: int = 4
    num_kv_heads: int = 0  # 0 = num_heads (multi-head); fewer = grouped-query attention
    head_width: int = 0  # 0 = width // num_heads (Qwen3, Gemma: their own head_dim)
    mlp_dim: int = 1024
    mlp: str = 'gelu'  # MLPS ('gelu': tanh-approximated, as GPT-2's gelu_new)
    norm: str = 'layernorm'  # NORMS
    norm_eps: float = 1e-6  # added to the variance in every norm (GPT-2, Llama: 1e-5)
    positions: str = 'learned'  # POSITIONS
    rope_theta: float = 10_000.0  # rotary positions' base (Llama 3: 500,000)
    # Rotary scaling of the global layers (ROPE_SCALINGS), transformers' formulas: 'linear'
    # (positions / factor), 'llama3' (Llama 3.1+), 'yarn' (Qwen long context)
    rope_scaling: str = 'none'
    rope_factor: float = 1.0
    rope_original_max_len: int = 0  # llama3, yarn: the context the model was pretrained on
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_beta_fast: float = 32.0  # yarn
    rope_beta_slow: float = 1.0  # yarn
    rope_attention_factor: float = 0.0  # yarn: scales queries and keys; 0 = 0.1 ln(factor) + 1
    rope_truncate: bool = True  # yarn: correction range rounded to whole dimensions
    # Local attention: a query sees the `window` latest keys, itself included (0 = all); every
    # layer local (Mistral), or with global_every = n every n-th layer global (Gemma 2: 2,
    # Gemma 3: 6), local layers then rotating with rope_local_theta (0 = rope_theta), unscaled
    window: int = 0
    global_every: int = 0
    rope_local_theta: float = 0.0
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (Qwen3, Gemma 3)
    post_norms: bool = False  # norms on each branch's output too (Gemma 2/3)
    embed_scale: bool = False  # token embeddings times sqrt(width) (Gemma)
    attention_scale: float = 0.0  # scores times this; 0 = head_width ** -0.5 (Gemma:
    # query_pre_attn_scalar ** -0.5)
    attention_softcap: float = 0.0  # scores -> cap * tanh(scores / cap); 0 = none (Gemma 2)
    logit_softcap: float = 0.0  # the same on the output logits (Gemma 2)
    bias: tuple = ()  # projections (PROJECTIONS) with a bias (GPT-2: all; Qwen2: ('qkv',))
    max_len: int = 256  # longest sequence (tokens, or patches + class token for ViT)
    dropout: float = 0.0
    tied_embeddings: bool = True  # LM: the output layer reuses the token embedding
    # 'dot_product': jax.nn.dot_product_attention (cuDNN on GPU); 'fused': a C++ kernel for
    # causal float32 attention on CPU (built on first use), splash attention on TPU (lengths a
    # multiple of 128), dot_product on GPU
    attention: str = 'einops'
    dtype: str = 'float32'  # compute: DTYPES
    param_dtype: str = 'float32'  # storage
    # What each block recomputes in the backward pass instead of storing: 'none', 'block'
    # (everything but its input) or 'dots' (keeps the projections' outputs): REMAT_POLICIES
    remat: str = 'none'
    scan_layers: bool = False  # the blocks as one nn.scan (Encoder): one compiled block
    patch_size: int = 4  # ViT
    pool: str = 'cls'  # classifier and ViT: the class token, the mean of the tokens, or (text
    # classifier) 'last': causal attention and the last token's state, as in a decoder LM
    lora_rank: int = 0  # > 0: low-rank adapters on lora_targets (bigjax/finetune.py)
    lora_alpha: float = 16.0  # adapter output scale alpha / rank
    lora_targets: tuple = ('qkv', 'out')  # projections that get adapters (PROJECTIONS)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.head_width or self.width // self.num_heads

    def local(self, layer: int) -> bool:
        """Whether block `layer` attends to a window (see `window`, `global_every`)."""
        return bool(self.window) and not (self.global_every and
                                          (layer + 1) % self.global_every == 0)

    def check(self) -> None:
        """Raises UserError for inconsistent or unknown options."""
        for field, known in (('mlp', MLPS), ('norm', NORMS), ('positions', POSITIONS),
                             ('attention', ATTENTIONS), ('pool', POOLS), ('remat', REMATS),
                             ('rope_scaling', ROPE_SCALINGS),
                             ('dtype', DTYPES), ('param_dtype', DTYPES)):
            if getattr(self, field) not in known:
                raise UserError(f'model.transformer.{field}={getattr(self, field)!r} is not one '
                                f'of {list(known)}')
        if min(self.width, self.depth, self.num_heads, self.mlp_dim, self.max_len,
               self.patch_size) < 1 or min(self.num_kv_heads, self.head_width) < 0:
            raise UserError('model.transformer sizes (width, depth, num_heads, mlp_dim, '
                            'max_len, patch_size) must be >= 1')
        if self.width % self.num_heads and not self.head_width:
            raise UserError(f'model.transformer.num_heads={self.num_heads} does not divide '
                            f'width={self.width}')
        if self.num_heads % self.kv_heads:
            raise UserError(f'model.transformer.num_kv_heads={self.num_kv_heads} does not '
                            f'divide num_heads={self.num_heads}')
        if self.positions == 'rope' and self.head_dim % 2:
            raise UserError(f'rotary positions need an even head width, got {self.head_dim}')
        if not 0 <= self.dropout < 1:
            raise UserError(f'model.transformer.dropout={self.dropout} must be in [0, 1)')
        if self.lora_rank < 0 or not set(self.lora_targets) <= set(PROJECTIONS):
            raise UserError(f'model.transformer.lora_rank={self.lora_rank} must be >= 0 and '
                            f'lora_targets={self.lora_targets} a subset of {PROJECTIONS}')
        if not set(self.bias) <= set(PROJECTIONS):
            raise UserError(f'model.transformer.bias={self.bias} must be a subset of '
                            f'{PROJECTIONS}')
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise UserError(f'model.transformer.norm_eps={self.norm_eps} and '
                            f'rope_theta={self.rope_theta} must be > 0')
        if min(self.window, self.global_every, self.rope_local_theta, self.attention_scale,
               self.attention_softcap, self.logit_softcap) < 0:
            raise UserError('model.transformer window, global_every, rope_local_theta, '
                            'attention_scale, attention_softcap and logit_softcap must be >= 0')
        if self.rope_scaling in ('llama3', 'yarn') and not (
                self.rope_original_max_len > 0 and self.rope_factor >= 1):
            raise UserError(f"model.transformer.rope_scaling='{self.rope_scaling}' needs "
                            'rope_original_max_len > 0 and rope_factor >= 1')
