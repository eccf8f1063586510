"""Train a bigjax config: python launch.py --config=configs/cnn_digits.py[:smoke] --workdir=DIR.

Any config value can be overridden: --config.optim.learning_rate=3e-4 --config.train.num_steps=500.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cnn_digits.py[:arg].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the report go (resumes).')
flags.mark_flags_as_required(['config', 'workdir'])


def fail(message: str) -> None:
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with one-line errors for bad config files and overrides."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        fail(lines[-1] if lines else str(e))
    except (AttributeError, KeyError) as e:  # An override names a key the config lacks.
        key = str(e).strip('"\'')
        overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
        named = [o for o in overrides if key in o[len('--config.'):].split('.')] or overrides
        fail(f'{named[0] if named else "--config"}: the config has no key {key!r} '
             '(bigjax/config.py lists every key)')
    except Exception as e:  # The config file itself fails: a syntax error, a bad import.
        fail(f'cannot load --config: {type(e).__name__}: {e}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # Library chatter (Orbax, tfds) off by default.
    config = flags.FLAGS.config
    try:
        config.keys()  # config_flags defers a missing config file's error to first use.
    except OSError as e:
        fail(f'cannot load the config file: {str(e).splitlines()[-1].strip()}')
    from bigjax import train
    from bigjax.errors import UserError
    try:
        train.run(config, flags.FLAGS.workdir)
    except UserError as e:
        fail(str(e))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
