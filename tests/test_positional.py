"""Positional schemes against their published definitions, and each one past its training length."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.errors import ConfigError
from research.model import attention as attention_lib
from research.model import positional as positional_lib
from research.model.positional import Positional, alibi_slopes, rope, t5_relative_bucket
from tests import test_model
from tests.test_model import T, V, logits

# Models are built once per configuration: building dominates these tests' time.
make = functools.lru_cache(test_model.make)

SCHEMES = ('learned', 'sinusoidal', 'none', 'rope', 'alibi', 't5_bias', 'shaw')
RELATIVE = ('rope', 'alibi', 't5_bias', 'shaw')
# A learned table holds only the positions it is sized for: tests past T size it to 8T, as the
# extrapolation experiment sizes it to its longest evaluation.
LONG = {'learned': {'max_len': 8 * T}}


# Relative positions (key - query) from far before the query to far after it.
RELATIVE_POSITION = np.arange(-10000, 10001)


def buckets_by_distance(bidirectional):
  """Buckets of keys 0, 1, ... before the query, and of keys 1, 2, ... after it."""
  buckets = np.asarray(t5_relative_bucket(RELATIVE_POSITION, bidirectional=bidirectional,
                                          num_buckets=32, max_distance=128))
  return buckets[RELATIVE_POSITION <= 0][::-1], buckets[RELATIVE_POSITION > 0]


def first_distance_of_each_bucket(buckets, lo, hi):
  return [int(np.argmax(buckets == j)) for j in range(lo, hi)]


def test_t5_causal_buckets():
  past, future = buckets_by_distance(bidirectional=False)
  np.testing.assert_array_equal(past[:16], np.arange(16))
  assert first_distance_of_each_bucket(past, 16, 32) == [
      16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113]
  assert (np.diff(past) >= 0).all() and past[10000] == 31
  # A causal bucket ignores keys after the query (they are masked).
  assert (future == 0).all()


def test_t5_bidirectional_buckets():
  past, future = buckets_by_distance(bidirectional=True)
  np.testing.assert_array_equal(past[:8], np.arange(8))
  assert first_distance_of_each_bucket(past, 8, 16) == [8, 12, 16, 23, 32, 46, 64, 91]
  assert (np.diff(past) >= 0).all() and past[10000] == 15
  # Keys after the query take the upper half, mirroring the keys before it.
  np.testing.assert_array_equal(future, past[1:] + 16)


def test_alibi_slopes():
  np.testing.assert_allclose(alibi_slopes(8), [1 / 2 ** i for i in range(1, 9)])
  np.testing.assert_allclose(alibi_slopes(16), [2 ** (-i / 2) for i in range(1, 17)])
  # Not a power of 2: slopes(4), then slopes(8) = 1/2, 1/4, ... at even indices.
  np.testing.assert_allclose(alibi_slopes(6), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])
  # slopes(8), then slopes(16) = 2^-0.5, 2^-1, ... at even indices.
  np.testing.assert_allclose(alibi_slopes(12), [1 / 2 ** i for i in range(1, 9)] + [
      2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5])


def rotate(x_H, position, **kwargs):
  return np.asarray(rope(jnp.asarray(x_H, jnp.float32)[None, None, None],
                         jnp.array([[position]]), **kwargs))[0, 0, 0]


@pytest.mark.parametrize('layout', ['half', 'interleaved'])
@pytest.mark.parametrize('fraction', [1.0, 0.5])
def test_rope_scores_depend_only_on_offset(layout, fraction):
  q_H, k_H = np.random.RandomState(0).normal(size=(2, 16))
  kwargs = dict(theta=10000.0, layout=layout, fraction=fraction)

  def score(pq, pk):
    return rotate(q_H, pq, **kwargs) @ rotate(k_H, pk, **kwargs)

  for offset in (0, 1, 5, 40):
    scores = [score(p + offset, p) for p in (0, 3, 17, 300)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4, atol=1e-4)
  assert abs(score(1, 0) - score(5, 0)) > 1e-3


def test_rope_interleaved_is_roformers_rotation_matrix():
  h, position, theta = 8, 3, 10000.0
  x_H = np.random.RandomState(1).normal(size=h)
  rotation_HH = np.zeros((h, h))
  for i in range(h // 2):
    a = position * theta ** (-2 * i / h)
    rotation_HH[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[math.cos(a), -math.sin(a)],
                                                   [math.sin(a), math.cos(a)]]
  np.testing.assert_allclose(rotate(x_H, position, theta=theta, layout='interleaved'),
                             rotation_HH @ x_H, atol=1e-5)


@pytest.mark.parametrize('fraction', [1.0, 0.5])
def test_rope_layouts_agree_up_to_a_permutation(fraction):
  """'half' on dims reordered (evens, then odds) is 'interleaved' reordered the same way."""
  h = 16
  r = positional_lib.rope_dims(h, fraction)
  perm = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, h)])
  q_H, k_H = np.random.RandomState(2).normal(size=(2, h))
  for position in (0, 1, 7, 100):
    interleaved = rotate(q_H, position, theta=10000.0, layout='interleaved', fraction=fraction)
    half = rotate(q_H[perm], position, theta=10000.0, layout='half', fraction=fraction)
    np.testing.assert_allclose(half, interleaved[perm], atol=1e-5)
  scores = [rotate(q_H[p], 9, theta=10000.0, layout=layout, fraction=fraction)
            @ rotate(k_H[p], 4, theta=10000.0, layout=layout, fraction=fraction)
            for p, layout in ((perm, 'half'), (np.arange(h), 'interleaved'))]
  np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)


@pytest.mark.parametrize('layout', ['half', 'interleaved'])
def test_rope_fraction_rotates_only_the_leading_dims(layout):
  h = 16
  r = positional_lib.rope_dims(h, 0.3)  # 4.8, rounded down to an even 4
  assert r == 4
  x_H = np.random.RandomState(3).normal(size=h)
  y_H = rotate(x_H, 5, theta=10000.0, layout=layout, fraction=0.3)
  np.testing.assert_array_equal(y_H[r:], x_H[r:].astype(np.float32))
  assert np.abs(y_H[:r] - x_H[:r]).max() > 1e-2
  # The rotated dims turn at the frequencies of an r-dimensional head (GPT-NeoX rotary_pct).
  np.testing.assert_allclose(y_H[:r], rotate(x_H[:r], 5, theta=10000.0, layout=layout),
                             atol=1e-6)


def test_sinusoidal_is_computed_for_any_position():
  d = 32
  positions = np.array([[0, 5, T, 8 * T, 1000]])
  i = np.arange(d // 2)
  angle = positions[..., None] / 10000.0 ** (2 * i / d)
  expected = np.stack([np.sin(angle), np.cos(angle)], axis=-1).reshape(1, 5, d)
  # float32 angles: about 1e-4 of error at position 1000.
  np.testing.assert_allclose(positional_lib.sinusoidal(jnp.asarray(positions), d), expected,
                             atol=5e-4)


# Two rows of T: two packed documents, then one document filling the row. Shapes the models of
# these tests already ran at, so nothing compiles afresh.
PACKED_POSITIONS = jnp.array([list(range(5)) + list(range(T - 5)), list(range(T))])


def test_learned_positions_past_the_table_read_nan():
  """Inside the table a position reads its row; past it NaN (no silent clamp), so a model asked
  for a position it has no row for gives NaN logits rather than plausible numbers."""
  model, params = make(positional='learned')
  positions = jnp.broadcast_to(jnp.arange(T) * 8, (2, T))
  out = Positional(model.cfg).apply({'params': params['positional']}, jnp.zeros((2, T, 32)),
                                    positions, method='embed')
  table = params['positional']['embedding']
  assert table.shape == (T, 32)
  np.testing.assert_array_equal(out[0, :2], table[jnp.array([0, 8])])
  assert np.isnan(np.asarray(out[:, 2:])).all()
  # Causal: the positions inside the table are untouched, every one past it is NaN.
  out = np.asarray(logits(model, params, np.random.RandomState(6).randint(0, V, (1, 2 * T))))
  assert np.isfinite(out[:, :T]).all() and np.isnan(out[:, T:]).all()


def test_learned_length_check_names_the_table():
  model, _ = make(positional='learned')
  positional_lib.check_learned_length(model.cfg, T, '--lengths')
  with pytest.raises(ConfigError, match=rf'^--lengths: {T + 1} tokens read positions up to {T}, '
                     rf'past the learned position table of model.max_len={T} rows'):
    positional_lib.check_learned_length(model.cfg, T + 1, '--lengths')
  rope, _ = make(positional='rope')
  positional_lib.check_learned_length(rope.cfg, 100 * T, '--lengths')  # no table to run past


def bias_of(scheme, **model):
  model, params = make(positional=scheme, **model)
  return params, Positional(model.cfg).apply({'params': params.get('positional', {})},
                                             PACKED_POSITIONS, PACKED_POSITIONS,
                                             method='attention_bias')


def relative_positions():
  """[2, T, T] key position - query position."""
  pos = np.asarray(PACKED_POSITIONS)
  return pos[:, None, :] - pos[:, :, None]


def test_alibi_bias_is_minus_slope_times_distance():
  _, bias = bias_of('alibi')
  expected = alibi_slopes(4)[None, :, None, None] * relative_positions()[:, None]
  assert bias.logits_BNTS.shape == (2, 4, T, T) and bias.rel_key_DH is None
  np.testing.assert_allclose(bias.logits_BNTS, expected, rtol=1e-6)
  # Keys before the query are pushed down, by slope * distance; the query's own key is not.
  assert bias.logits_BNTS[0, 0, 9, 6] == -0.25 * 3 and bias.logits_BNTS[0, 0, 9, 9] == 0


def test_t5_bias_is_the_bucket_scalar_per_head():
  params, bias = bias_of('t5_bias')
  table = np.asarray(params['positional']['rel_bias'])
  assert table.shape == (32, 4)
  buckets = np.asarray(t5_relative_bucket(relative_positions(), bidirectional=False,
                                          num_buckets=32, max_distance=128))
  np.testing.assert_allclose(bias.logits_BNTS, table[buckets].transpose(0, 3, 1, 2))


def test_shaw_clips_relative_distance():
  params, bias = bias_of('shaw')
  rel_key, rel_value = params['positional']['rel_key'], params['positional']['rel_value']
  assert rel_key.shape == (33, 8) and bias.logits_BNTS is None
  np.testing.assert_array_equal(bias.rel_key_DH, rel_key)
  np.testing.assert_array_equal(bias.rel_value_DH, rel_value)
  np.testing.assert_array_equal(bias.rel_index_BTS, np.clip(relative_positions(), -16, 16) + 16)
  # Past the clip distance every key shares the farthest bucket.
  long_positions = jnp.broadcast_to(jnp.arange(T) * 3, (2, T))
  model, _ = make(positional='shaw')
  far = Positional(model.cfg).apply({'params': params['positional']}, long_positions,
                                    long_positions, method='attention_bias')
  np.testing.assert_array_equal(far.rel_index_BTS[0, 11, :6], 0)
  assert far.rel_index_BTS[0, 11, 6] == 1


def test_shaw_with_zero_tables_is_nope():
  shaw, params = make(positional='shaw')
  nope, _ = make(positional='none')
  x = np.random.RandomState(4).randint(0, V, (2, T))
  zero = dict(params, positional={k: jnp.zeros_like(v) for k, v in params['positional'].items()})
  without = {k: v for k, v in params.items() if k != 'positional'}
  np.testing.assert_allclose(logits(shaw, zero, x), logits(nope, without, x), atol=1e-6)
  assert np.abs(np.asarray(logits(shaw, params, x) - logits(nope, without, x))).max() > 1e-4


@pytest.mark.parametrize('logit_heads', [4, 1])
def test_attention_terms_match_a_direct_computation(logit_heads):
  """Shaw et al. eqs. 3-4 plus an additive logits bias after the 1/sqrt(H) scaling, with GQA."""
  b, t, n, kv, h = 2, 5, 4, 2, 3
  rng = np.random.RandomState(5)
  q = rng.normal(size=(b, t, n, h))
  k, v = rng.normal(size=(2, b, t, kv, h))
  buckets = 7
  rel_k, rel_v = rng.normal(size=(2, buckets, h))
  index = rng.randint(0, buckets, size=(b, t, t))
  logit_bias = rng.normal(size=(b, logit_heads, t, t))
  mask = np.asarray(attention_lib.attention_mask(jnp.ones((b, t), jnp.int32)))
  out = jax.jit(attention_lib.dot_product_attention)(
      *map(jnp.asarray, (q, k, v, mask)),
      attention_lib.AttentionBias(logits_BNTS=jnp.asarray(logit_bias),
                                  rel_key_DH=jnp.asarray(rel_k), rel_value_DH=jnp.asarray(rel_v),
                                  rel_index_BTS=jnp.asarray(index)))
  expected = np.zeros_like(q)
  for bi in range(b):
    for ni in range(n):
      kvi = ni // (n // kv)
      for ti in range(t):
        e = np.array([q[bi, ti, ni] @ (k[bi, s, kvi] + rel_k[index[bi, ti, s]]) / math.sqrt(h)
                      + logit_bias[bi, ni % logit_heads, ti, s] for s in range(ti + 1)])
        p = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
        expected[bi, ti, ni] = sum(p[s] * (v[bi, s, kvi] + rel_v[index[bi, ti, s]])
                                   for s in range(ti + 1))
  np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize('scheme', SCHEMES)
def test_runs_at_eight_times_the_training_length(scheme):
  model, params = make(positional=scheme, **LONG.get(scheme, {}))
  x = np.random.RandomState(6).randint(0, V, (1, 8 * T))
  out = logits(model, params, x)
  assert out.shape == (1, 8 * T, V) and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('scheme', SCHEMES)
def test_schemes_read_positions_and_relative_ones_only_their_differences(scheme):
  """Relative schemes ignore a shift of every position; all but NoPE see the positions."""
  model, params = make(positional=scheme, **LONG.get(scheme, {}))
  x = np.random.RandomState(7).randint(0, V, (2, T))
  positions = np.broadcast_to(np.arange(T), (2, T))
  base = logits(model, params, x, positions=positions)
  shifted = logits(model, params, x, positions=positions + 3)
  stretched = logits(model, params, x, positions=positions * 2)
  if scheme in RELATIVE + ('none',):
    np.testing.assert_allclose(shifted, base, atol=1e-5)
  else:
    assert np.abs(np.asarray(shifted - base)).max() > 1e-4
  assert (np.abs(np.asarray(stretched - base)).max() > 1e-4) == (scheme != 'none')


@pytest.mark.parametrize('key, value, match', [
    ('rope_layout', 'neox', 'model.rope_layout'),
    ('rope_fraction', 0.0, 'model.rope_fraction'),
    ('rope_fraction', 0.2, 'rotates no pair'),  # 0.2 * 8 dims per head: no pair to rotate
    ('rope_theta', -1.0, 'model.rope_theta'),
    ('t5_max_distance', 16, 'model.t5_max_distance'),  # no room for log-spaced buckets
    ('shaw_max_distance', 0, 'model.shaw_max_distance'),
])
def test_config_refuses_bad_positional_settings(key, value, match):
  c = config_lib.default_config()
  c.model.positional, c.model.num_heads, c.model.d_model = 'rope', 4, 32
  c.model[key] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)
