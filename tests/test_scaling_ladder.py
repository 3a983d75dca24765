"""The size ladder: its parameter counts are the real model's (abstract init, no compute), one
aspect ratio holds across a 100x range of sizes, and a target it cannot build is one line."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from research import config as config_lib
from research.errors import ConfigError
from research.model import archs
from research.model.transformer import ModelConfig
from research.scaling import ladder as ladder_lib
from research.train import step as step_lib

V, T = 300, 64


def model_counts(seq_len=T, **model) -> tuple:
  """(count_params_of the resolved model config, the model's parameter count from jax.eval_shape
  of its init, the part of it in its embed, positional and unembed modules)."""
  c = config_lib.default_config()
  c.data.seq_len = seq_len
  # An architecture other than the decoder needs an objective that runs on it.
  c.objective.name = {'prefix_lm': 'prefix_lm', 'encoder': 'bert_mlm'}.get(
      model.get('arch'), c.objective.name)
  for k, v in model.items():
    c.model[k] = v
  config_lib.validate(c)
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=V))
  shapes = jax.eval_shape(lambda: step_lib.init_params(archs.build(cfg), jax.random.PRNGKey(0),
                                                       {'length': seq_len}))
  params = nn.meta.unbox(shapes)
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  embedding = sum(size(params[k]) for k in ('embed', 'positional', 'unembed') if k in params)
  return ladder_lib.count_params_of(cfg), size(params), embedding


def model_keys(rung) -> dict:
  return {k.split('.', 1)[1]: v for k, v in rung.overrides().items()}


@pytest.mark.parametrize('model', [
    model_keys(ladder_lib.rung(2, vocab_size=V, seq_len=T)),  # the defaults' rung
    dict(model_keys(ladder_lib.rung(3, vocab_size=V, seq_len=T, head_dim=32, aspect_ratio=32)),
         positional='rope', tie_embeddings=False, use_bias=False, norm='rmsnorm',
         activation='swiglu', d_ff=0),
    dict(num_layers=2, d_model=96, num_heads=4, num_kv_heads=2, norm_position='post',
         positional='t5_bias', activation='relu'),
    dict(num_layers=1, d_model=64, num_heads=2, head_dim=48, positional='shaw', arch='prefix_lm',
         activation='geglu'),
    dict(num_layers=2, d_model=64, num_heads=2, positional='alibi', max_len=128, arch='encoder'),
], ids=['ladder-default', 'untied-rope-rmsnorm-swiglu', 'gqa-post-t5', 'shaw-prefix-geglu',
        'alibi-encoder'])
def test_counts_are_the_models_own(model):
  counted, actual, embedding = model_counts(**model)
  assert counted['total'] == actual
  assert counted['embedding'] == embedding
  assert counted['non_embedding'] == actual - embedding


def test_ladder_rung_builds_the_model_it_counts():
  """A rung picked by its total count, applied through its config overrides: that model's
  parameter count is the rung's."""
  r = ladder_lib.ladder(2e6, vocab_size=V, seq_len=T, count='total')
  counted, actual, embedding = model_counts(**model_keys(r))
  assert (r.total_params, r.non_embedding_params, r.embedding_params) == (
      actual, actual - embedding, embedding)
  assert counted['total'] == r.total_params


def test_one_aspect_ratio_across_a_hundred_fold_range():
  """1e6 to 1e8 non-embedding parameters: d_model / num_layers = 64 and heads of 64 at every rung,
  d_ff = 4 d_model, each rung within 2x of its target and larger than the last; non-embedding
  ~ 12 d_model^2 num_layers."""
  targets = np.logspace(6, 8, 7)
  rungs = ladder_lib.ladder_sizes(targets, vocab_size=V, seq_len=T)
  assert rungs[-1].non_embedding_params / rungs[0].non_embedding_params > 50
  for t, r in zip(targets, rungs):
    assert r.d_model == 64 * r.num_layers and r.d_model == 64 * r.num_heads
    assert r.d_ff == 4 * r.d_model and r.head_dim == 64
    assert 0.5 < r.non_embedding_params / t < 2
    assert r.non_embedding_params == pytest.approx(12 * r.d_model ** 2 * r.num_layers, rel=0.02)
  assert all(a.non_embedding_params < b.non_embedding_params for a, b in zip(rungs, rungs[1:]))
  # A ratio that is not a multiple of the head size holds to within rounding d_model to a head.
  for r in ladder_lib.ladder_sizes(np.logspace(6, 8, 5), vocab_size=V, seq_len=T,
                                   aspect_ratio=48):
    assert abs(r.d_model - 48 * r.num_layers) <= 32


def test_ladder_is_the_nearest_rung_in_log_space():
  kw = dict(vocab_size=V, seq_len=T)
  r3, r4 = ladder_lib.rung(3, **kw), ladder_lib.rung(4, **kw)
  mid = (r3.non_embedding_params * r4.non_embedding_params) ** 0.5
  assert ladder_lib.ladder(mid * 0.99, **kw) == r3
  assert ladder_lib.ladder(mid * 1.01, **kw) == r4
  assert ladder_lib.ladder(r3.total_params, count='total', **kw) == r3


BAD = [
    (lambda: ladder_lib.ladder(1e4, vocab_size=V, seq_len=T), 'smallest the rule allows'),
    (lambda: ladder_lib.ladder(1.5e5, vocab_size=V, seq_len=T), 'finer steps'),
    (lambda: ladder_lib.ladder(-5, vocab_size=V, seq_len=T), 'positive number'),
    (lambda: ladder_lib.ladder(float('nan'), vocab_size=V, seq_len=T), 'positive number'),
    (lambda: ladder_lib.ladder('big', vocab_size=V, seq_len=T), 'positive number'),
    (lambda: ladder_lib.ladder(1e6, vocab_size=V, seq_len=T, count='all'), 'count must be'),
    (lambda: ladder_lib.ladder(1e6, vocab_size=V, seq_len=T, head_dim=0), 'head_dim'),
    (lambda: ladder_lib.ladder_sizes([1e6, 1.05e6], vocab_size=V, seq_len=T), 'both give'),
    (lambda: ladder_lib.count_params(vocab_size=V, num_layers=1, d_model=64, num_heads=1,
                                     d_ff=256, max_len=T, arch='encoder_decoder'),
     'not model.arch'),
]


@pytest.mark.parametrize('call,match', BAD, ids=[m for _, m in BAD])
def test_a_target_it_cannot_build_is_a_one_line_config_error(call, match):
  with pytest.raises(ConfigError, match=match) as info:
    call()
  assert '\n' not in str(info.value)
