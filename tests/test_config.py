import ml_collections
import pytest

from bigjax import config as config_lib
from bigjax.errors import UserError
from conftest import CONFIGS, load_config


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_and_its_smoke_variant_pass_the_schema(name):
    full, smoke = load_config(name), load_config(name, 'smoke')
    config_lib.check(full)
    config_lib.check(smoke)
    assert 0 < smoke.train.num_steps <= 50
    with pytest.raises(ValueError, match='unknown config arg'):
        load_config(name, 'huge')


def test_a_config_json_written_before_newer_keys_reads_with_their_defaults():
    saved = config_lib.default_config().to_dict()
    saved['data']['name'] = 'python_stdlib'
    del saved['train']['objective'], saved['train']['preference'], saved['lora_trained']
    config = config_lib.from_json(saved)
    assert config.data.name == 'python_stdlib' and config.train.objective == 'auto'
    assert config.train.preference.beta == 0.1 and config.lora_trained == ()
    saved['train']['epochs'] = 3
    with pytest.raises(UserError, match=r'unknown config key config\.train\.epochs'):
        config_lib.from_json(saved)


def test_unknown_key_is_a_clear_error():
    config = config_lib.default_config()
    config.train.unlock()
    config.train.num_step = 5
    with pytest.raises(UserError, match=r'unknown config key config\.train\.num_step'):
        config_lib.check(config)


@pytest.mark.parametrize('section, key, value, expected', [
    ('train', 'batch_size', '64', 'int'),
    ('optim', 'learning_rate', 'fast', 'float'),
    ('model', 'cnn', 3, 'section'),
    ('data', 'download', 1, 'bool'),
])
def test_wrong_type_is_a_clear_error(section, key, value, expected):
    config = config_lib.default_config()
    # A config file building a section from a plain dict, as ConfigDict's type lock allows.
    config[section] = ml_collections.ConfigDict({**config[section].to_dict(), key: value})
    with pytest.raises(UserError, match=rf'config\.{section}\.{key}.*{expected}'):
        config_lib.check(config)


def test_int_where_float_is_expected_is_fine():
    config = config_lib.default_config()
    config.optim = ml_collections.ConfigDict({**config.optim.to_dict(), 'learning_rate': 1})
    config_lib.check(config)
