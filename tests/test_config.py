"""The config's contract: unknown keys and bad values are refused with the key named."""

import pytest

from research import config as config_lib
from research.errors import ConfigError


def bad(mutate, match):
  c = config_lib.default_config()
  mutate(c)
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_defaults_validate():
  config_lib.validate(config_lib.default_config())


def test_unknown_and_bad_values():
  bad(lambda c: setattr(c.model, 'num_layer', 3), "unknown config key 'model.num_layer'")
  bad(lambda c: setattr(c.model, 'norm', 'batchnorm'), 'model.norm=.*layernorm, rmsnorm')
  bad(lambda c: setattr(c.model, 'positional', 'rope2'), 'model.positional')
  bad(lambda c: setattr(c.model, 'num_layers', 0), 'model.num_layers=0: must be a positive')
  bad(lambda c: setattr(c.model, 'num_kv_heads', 3), 'model.num_kv_heads=3: must divide')
  bad(lambda c: setattr(c.model, 'dropout', 1.5), 'model.dropout')
  bad(lambda c: setattr(c.train, 'compute_dtype', 'float8'), 'train.compute_dtype')
  bad(lambda c: setattr(c.train, 'warmup_steps', 10 ** 6), 'train.warmup_steps')
  bad(lambda c: setattr(c.mesh, 'shape', (2, 2)), 'mesh.shape')
  bad(lambda c: setattr(c.mesh, 'rules', (('batch', 'pod'),)), 'mesh.rules')


def test_resolve_fills_derived_values():
  c = config_lib.default_config()
  c.model.activation = 'swiglu'
  r = config_lib.resolve(c, vocab_size=300)
  assert (r.model.vocab_size, r.model.num_kv_heads, r.model.head_dim, r.model.d_ff,
          r.model.max_len) == (300, 4, 64, 704, 256)
  # A larger model.vocab_size pads the tokenizer's vocabulary; a smaller one cannot hold it.
  c.model.vocab_size = 304
  assert config_lib.resolve(c, vocab_size=300).model.vocab_size == 304
  c.model.vocab_size = 299
  with pytest.raises(ConfigError, match='model.vocab_size=299 but the tokenizer has 300'):
    config_lib.resolve(c, vocab_size=300)


def test_config_diff_names_changes():
  a = config_lib.normalized(config_lib.default_config())
  c = config_lib.default_config()
  c.model.d_model = 128
  assert config_lib.config_diff(a, config_lib.normalized(c)) == ['model.d_model: 256 -> 128']
