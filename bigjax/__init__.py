"""bigjax: build large models from scratch in JAX/Flax, train them sharded, fine-tune them."""
