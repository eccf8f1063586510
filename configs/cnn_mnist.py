"""The article's experiment done right: its SimpleCNN on tfds `mnist`, Adam 1e-3, batch 64, 10 epochs.

Needs internet once (tfds downloads and prepares mnist); offline, use configs/cnn_digits.py.
python launch.py --config=configs/cnn_mnist.py --workdir=/tmp/bigjax/mnist
"""

from bigjax.config import default_config, shrink_to_smoke


def get_config(arg: str | None = None):
    config = default_config()
    config.data.name = 'mnist'
    config.data.eval_split = 'test'
    config.model.cnn.features = (32, 64)  # conv 3x3 valid, as in the article
    config.model.cnn.hidden = 128
    config.optim.name = 'adam'
    config.optim.learning_rate = 1e-3
    config.train.batch_size = 64
    config.train.num_epochs = 10.0
    config.train.eval_batch_size = 512
    config.train.log_every = 200
    if arg == 'smoke':
        config.model.cnn.features = (4, 8)
        config.model.cnn.hidden = 16
        shrink_to_smoke(config, num_steps=6)
    elif arg:
        raise ValueError(f'unknown config arg {arg!r}; use "smoke" or nothing')
    return config
