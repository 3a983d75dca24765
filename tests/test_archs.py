"""Each architecture's attention pattern, end to end: a token's outputs do not move when a token it
must not see changes, and do move when one it sees changes, under every positional scheme and
every attention implementation (the whole cube under the `slow` marker)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.model import archs
from research.model.transformer import ModelConfig
from research.train import step as step_lib

V, T, S, P = 40, 10, 7, 4  # vocabulary, main length, encoder length, prefix length
SCHEMES = ('learned', 'sinusoidal', 'none', 'rope', 'alibi', 't5_bias', 'shaw')
IMPLS = ('einsum', 'blocked', 'jax_xla')


def model_of(arch, positional, impl, share_layers=False):
  c = config_lib.default_config()
  c.model.arch, c.model.positional, c.model.attention_impl = arch, positional, impl
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 16, 2
  c.model.num_encoder_layers = 0 if share_layers else 1
  c.model.share_layers = share_layers
  c.model.init_std = 0.3  # larger weights: a change a token can see shows well above rounding
  c.data.seq_len = T
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=V))
  cfg = cfg.__class__(**{**cfg.__dict__, 'max_len': 2 * T})
  model = archs.build(cfg)
  params = nn.meta.unbox(step_lib.init_params(model, jax.random.PRNGKey(0),
                                              {'length': T, 'encoder_length': S}))
  return model, params


def base_batch(n):
  """n copies of one row: 2 documents then padding on the main sequence; a padded encoder row."""
  rng = np.random.RandomState(0)
  seg = np.array([1] * 6 + [2] * 2 + [0] * 2)
  pos = np.array(list(range(6)) + [0, 1, 0, 0])
  enc_seg = np.array([1] * 5 + [0] * 2)
  one = {'inputs': rng.randint(0, V, T), 'segment_ids': seg, 'positions': pos,
         'targets': np.zeros(T, int), 'loss_mask': np.ones(T),
         'prefix_mask': (np.arange(T) < P).astype(int),
         'encoder_inputs': rng.randint(0, V, S), 'encoder_segment_ids': enc_seg,
         'encoder_positions': np.where(enc_seg > 0, np.arange(S), 0)}
  return {k: np.repeat(v[None], n, 0).astype(np.float32 if k == 'loss_mask' else np.int32)
          for k, v in one.items()}


def sees(arch):
  """[T, T] whether main position q may see main token k, and [T, S] encoder token s."""
  seg = base_batch(1)['segment_ids'][0]
  same = (seg[:, None] == seg[None, :]) & (seg[None, :] > 0)
  q, k = np.arange(T)[:, None], np.arange(T)[None]
  pattern = {'decoder': k <= q, 'encoder_decoder': k <= q, 'encoder': np.ones((T, T), bool),
             'prefix_lm': (k <= q) | ((q < P) & (k < P))}[arch]
  enc = base_batch(1)['encoder_segment_ids'][0] > 0
  return same & pattern, np.broadcast_to((seg[:, None] > 0) & enc[None], (T, S))


def check(arch, positional, impl, share_layers=False):
  model, params = model_of(arch, positional, impl, share_layers)
  keys = model.BATCH_KEYS
  # Row 0 is the input; row 1 + t changes main token t; row 1 + T + s changes encoder token s.
  batch = base_batch(1 + T + S)
  for t in range(T):
    batch['inputs'][1 + t, t] = (batch['inputs'][1 + t, t] + 7) % V
  for s in range(S):
    batch['encoder_inputs'][1 + T + s, s] = (batch['encoder_inputs'][1 + T + s, s] + 7) % V
  logits = np.asarray(jax.jit(model.apply)({'params': params},
                                           {k: jnp.asarray(batch[k]) for k in keys}))
  moved = np.abs(logits - logits[:1]).max(axis=-1)  # [variant, position]
  see_main, see_enc = sees(arch)
  real = base_batch(1)['segment_ids'][0] > 0
  variants = [(t, see_main[:, t]) for t in range(T)]
  if 'encoder_inputs' in keys:
    variants += [(T + s, see_enc[:, s]) for s in range(S)]
  for i, visible in variants:
    for q in np.flatnonzero(real):
      if visible[q]:
        assert moved[1 + i, q] > 1e-4, f'{arch}/{positional}/{impl}: position {q} misses token {i}'
      else:
        assert moved[1 + i, q] < 1e-5, f'{arch}/{positional}/{impl}: position {q} sees token {i}'


# The default suite: each new architecture under the schemes whose bidirectional form differs
# (T5 buckets, ALiBi, Shaw), one absolute and RoPE, and each implementation once per architecture
# (the decoder's causality under every scheme: test_model.test_causal_every_switch).
CORE = [('prefix_lm', s, 'einsum') for s in ('t5_bias', 'alibi', 'learned')]
CORE += [('encoder_decoder', s, 'einsum') for s in ('t5_bias', 'rope', 'shaw')]
CORE += [('encoder', s, 'einsum') for s in ('t5_bias', 'alibi', 'sinusoidal')]
CORE += [(arch, 'alibi', impl) for arch in archs.ARCHS for impl in ('blocked', 'jax_xla')]
CUBE = [(arch, scheme, impl) for arch in archs.ARCHS for scheme in SCHEMES for impl in IMPLS
        if (arch, scheme, impl) not in CORE and not (scheme == 'shaw' and impl == 'jax_xla')]


@pytest.mark.parametrize('arch,positional,impl', CORE)
def test_attention_pattern(arch, positional, impl):
  check(arch, positional, impl)


def test_attention_pattern_with_shared_encoder_decoder_layers():
  check('encoder_decoder', 't5_bias', 'einsum', share_layers=True)


@pytest.mark.slow
@pytest.mark.parametrize('arch,positional,impl', CUBE)
def test_attention_pattern_every_scheme_and_impl(arch, positional, impl):
  check(arch, positional, impl)


def test_encoder_decoder_shares_or_separates_embeddings_and_counts_its_layers():
  model, params = model_of('encoder_decoder', 't5_bias', 'einsum')
  assert {'embed', 'encoder_positional', 'positional', 'encoder_layer_0', 'layer_0', 'layer_1',
          'encoder_norm', 'norm_final'} == set(params)
  assert 'cross_attention' in params['layer_0'] and 'cross_attention' not in params['encoder_layer_0']
  # T5: a relative-bias table per stack, none in cross-attention.
  assert params['encoder_positional']['rel_bias'].shape == params['positional']['rel_bias'].shape
  c = config_lib.default_config()
  c.model.arch, c.model.share_embeddings, c.data.seq_len = 'encoder_decoder', False, T
  c.model.num_layers, c.model.d_model, c.model.num_heads = 1, 16, 2
  separate = archs.build(ModelConfig.from_config(config_lib.resolve(c, vocab_size=V)))
  shapes = jax.eval_shape(lambda: step_lib.init_params(separate, jax.random.PRNGKey(0),
                                                       {'length': T, 'encoder_length': S}))
  assert 'encoder_embed' in shapes and 'encoder_layer_0' in shapes  # 0: as deep as the decoder


def test_shared_layers_halve_the_encoder_decoder_and_keep_its_pattern():
  c = config_lib.default_config()
  c.model.arch, c.data.seq_len = 'encoder_decoder', T
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 16, 2

  def count(**model):
    for k, v in model.items():
      c.model[k] = v
    m = archs.build(ModelConfig.from_config(config_lib.resolve(c, vocab_size=V)))
    shapes = jax.eval_shape(lambda: step_lib.init_params(m, jax.random.PRNGKey(0),
                                                         {'length': T, 'encoder_length': S}))
    return shapes, sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)))

  separate, n_separate = count(share_layers=False)
  shared, n_shared = count(share_layers=True)
  assert not any(k.startswith('encoder_layer') for k in shared)
  layer = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(separate['encoder_layer_0'])))
  assert n_separate - n_shared == 2 * layer  # the encoder's two blocks
  c.model.num_encoder_layers = 1
  with pytest.raises(config_lib.ConfigError, match='model.share_layers'):
    config_lib.validate(c)
