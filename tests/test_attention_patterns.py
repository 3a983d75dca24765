"""Every Mask pattern under every attention implementation: the same values as the einsum
reference, and a key the pattern forbids never moves an output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.model import attention

B, T, S, N, K, H = 2, 8, 6, 4, 2, 8
CPU_IMPLS = ('einsum', 'blocked', 'jax_xla')  # jax_cudnn needs an NVIDIA GPU


def _mask(pattern):
  """A Mask of the pattern over packed rows with padding (and a prefix of 3 and 5 tokens)."""
  seg_q = jnp.asarray([[1, 1, 1, 1, 1, 2, 2, 0], [1] * 8])
  if pattern == 'cross':
    seg_k = jnp.asarray([[1, 1, 1, 1, 0, 0], [1] * 6])
    return attention.Mask((seg_q > 0).astype(jnp.int32), seg_k, pattern='cross')
  prefix = (jnp.arange(T)[None] < jnp.asarray([[3], [5]])).astype(jnp.int32)
  kwargs = dict(prefix_q_BT=prefix, prefix_k_BS=prefix) if pattern == 'prefix' else {}
  return attention.Mask(seg_q, seg_q, pattern=pattern, **kwargs)


def _qkv(pattern, seed=0):
  rng = np.random.RandomState(seed)
  s = S if pattern == 'cross' else T
  return (jnp.asarray(rng.randn(B, T, N, H), jnp.float32),
          jnp.asarray(rng.randn(B, s, K, H), jnp.float32),
          jnp.asarray(rng.randn(B, s, K, H), jnp.float32))


def _bias(pattern, with_shaw):
  s = S if pattern == 'cross' else T
  rng = np.random.RandomState(1)
  bias = attention.AttentionBias(logits_BNTS=jnp.asarray(rng.randn(B, N, T, s), jnp.float32))
  if with_shaw:
    bias = bias.replace(rel_key_DH=jnp.asarray(rng.randn(5, H), jnp.float32),
                        rel_value_DH=jnp.asarray(rng.randn(5, H), jnp.float32),
                        rel_index_BTS=jnp.asarray(rng.randint(0, 5, (B, T, s))))
  return bias


def _expected_mask(pattern):
  """The pattern written out from its definition, [B, T, S] bool."""
  seg_q = np.array([[1, 1, 1, 1, 1, 2, 2, 0], [1] * 8])
  if pattern == 'cross':
    seg_k = np.array([[1, 1, 1, 1, 0, 0], [1] * 6])
    return (seg_q[:, :, None] > 0) & (seg_k[:, None, :] > 0)
  same = (seg_q[:, :, None] == seg_q[:, None, :]) & (seg_q[:, None, :] > 0)
  i, j = np.arange(T)[:, None], np.arange(T)[None]
  if pattern == 'full':
    return same
  allowed = np.broadcast_to(j <= i, (B, T, T))
  if pattern == 'prefix':
    p = np.array([3, 5])[:, None, None]
    allowed = allowed | ((i < p) & (j < p))
  return same & allowed


@pytest.mark.parametrize('pattern', attention.PATTERNS)
def test_mask_blocks_are_the_pattern(pattern):
  mask = _mask(pattern)
  np.testing.assert_array_equal(np.asarray(mask.block())[:, 0], _expected_mask(pattern))
  np.testing.assert_array_equal(mask.block(2, 7, 1, 5), mask.block()[:, :, 2:7, 1:5])


def test_a_query_offset_sees_every_cached_key_before_it():
  """One query at index 8 against 12 cached keys, 9 of them filled: keys 0..8 visible."""
  seg_k = jnp.asarray([[1] * 9 + [0] * 3])
  mask = attention.Mask(jnp.ones((1, 1), jnp.int32), seg_k, index_q_BT=jnp.asarray([[8]]),
                        pattern='causal')
  np.testing.assert_array_equal(np.asarray(mask.block())[0, 0, 0], [True] * 9 + [False] * 3)


# Position terms: none; a logits bias (ALiBi, T5 bias); a logits bias and Shaw's relative key
# and value vectors, which jax.nn.dot_product_attention cannot add.
CASES = [(impl, terms) for impl in CPU_IMPLS
         for terms in ('none', 'logits' if impl == 'jax_xla' else 'shaw')]


def test_jax_attention_refuses_relative_vectors():
  with pytest.raises(ValueError, match='relative key/value'):
    attention.attend(*_qkv('causal'), _mask('causal'), _bias('causal', True), impl='jax_xla')


@pytest.mark.parametrize('impl,terms', CASES)
@pytest.mark.parametrize('pattern', attention.PATTERNS)
def test_every_impl_honours_every_pattern(impl, pattern, terms):
  mask = _mask(pattern)
  bias = None if terms == 'none' else _bias(pattern, terms == 'shaw')
  q, k, v = _qkv(pattern)
  s = k.shape[1]
  # Row 0 of the batch of variants is the input itself; row 1 + j has key j moved.
  shift = 3.0 * jnp.concatenate([jnp.zeros((1, s)), jnp.eye(s)])[:, None, :, None, None]

  @jax.jit
  def run(q, k, v):
    ours = jax.vmap(lambda dk: attention.attend(q, k + dk, v + dk, mask, bias, impl=impl))(shift)
    return ours, attention.dot_product_attention(q, k, v, mask, bias)

  outs, ref = (np.asarray(x) for x in run(q, k, v))
  real_q = np.asarray(mask.segment_ids_q_BT) > 0
  out = outs[0]
  np.testing.assert_allclose(out[real_q], ref[real_q], atol=2e-6)
  allowed = _expected_mask(pattern)
  for key in range(s):
    moved = np.abs(outs[1 + key] - out).max(axis=(2, 3))
    for b in range(B):
      for query in range(T):
        if not real_q[b, query]:
          continue
        if allowed[b, query, key]:
          assert moved[b, query] > 1e-4, (b, query, key)
        else:
          assert moved[b, query] < 1e-6, (b, query, key)
