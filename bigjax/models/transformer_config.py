"""The Transformer's hyperparameters (model.transformer in a config) and their checks."""

import dataclasses

import jax
import jax.numpy as jnp

from bigjax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'swiglu')
POSITIONS = ('learned', 'rope')
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
    mlp_dim: int = 1024
    mlp: str = 'gelu'  # MLPS ('gelu': tanh-approximated, as GPT-2's gelu_new)
    norm: str = 'layernorm'  # NORMS
    norm_eps: float = 1e-6  # added to the variance in every norm (GPT-2, Llama: 1e-5)
    positions: str = 'learned'  # POSITIONS
    rope_theta: float = 10_000.0  # rotary positions' base (Llama 3: 500,000)
    bias: tuple = ()  # projections (PROJECTIONS) with a bias (GPT-2: all; Qwen2: ('qkv',))
    max_len: int = 256  # longest sequence (tokens, or patches + class token for ViT)
    dropout: float = 0.0
    tied_embeddings: bool = True  # LM: the output layer reuses the token embedding
    # 'dot_product': jax.nn.dot_product_attention (cuDNN on GPU); 'fused': a C++ kernel for
    # causal float32 attention on CPU (built on first use), dot_product on GPU/TPU
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
        return self.width // self.num_heads

    def check(self) -> None:
        """Raises UserError for inconsistent or unknown options."""
        for field, known in (('mlp', MLPS), ('norm', NORMS), ('positions', POSITIONS),
                             ('attention', ATTENTIONS), ('pool', POOLS), ('remat', REMATS),
                             ('dtype', DTYPES), ('param_dtype', DTYPES)):
            if getattr(self, field) not in known:
                raise UserError(f'model.transformer.{field}={getattr(self, field)!r} is not one '
                                f'of {list(known)}')
        if min(self.width, self.depth, self.num_heads, self.mlp_dim, self.max_len,
               self.patch_size) < 1 or self.num_kv_heads < 0:
            raise UserError('model.transformer sizes (width, depth, num_heads, mlp_dim, '
                            'max_len, patch_size) must be >= 1')
        if self.width % self.num_heads:
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
