"""bigjax: build large models from scratch in JAX/Flax, train them sharded, fine-tune them."""

from bigjax import platform as _platform

_platform.set_cpu_defaults()
