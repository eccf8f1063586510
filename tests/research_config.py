"""A researcher's config for tests/research_pieces.py's model, data and task (import that
module first: launch.py --import=tests.research_pieces --config=tests/research_config.py)."""

from bigjax.config import default_config


def get_config():
    config = default_config()
    config.model.name = 'residual_mlp'
    config.data.name = 'noisy_linear'
    config.data.synthetic.train_examples = 512
    config.data.synthetic.eval_examples = 128
    config.mesh.data, config.mesh.fsdp = 4, 2
    config.optim.learning_rate = 3e-3
    config.train.batch_size = 32
    config.train.num_steps = 60
    config.train.log_every = 10
    config.train.eval_every = 30
    config.train.checkpoint_every = 20
    return config
