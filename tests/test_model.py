"""The decoder's behaviour: masking, packing, switches, and logical axes on every parameter."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.model.archs import Decoder
from research.model.presets import apply_preset
from research.model.transformer import ModelConfig
from research.train import step as step_lib

V, T = 50, 12


def make(**model):
  """A 2-layer model and its parameters, layers as a Python loop unless scan_layers is given."""
  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 32, 4
  c.model.scan_layers = False
  c.data.seq_len = T
  for k, v in model.items():
    c.model[k] = v
  config_lib.validate(c)
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=V))
  model = Decoder(cfg)
  params = nn.meta.unbox(step_lib.init_params(model, jax.random.PRNGKey(0), {'length': T}))
  return model, params


def batch_of(tokens, segments=None, positions=None):
  """A decoder's Batch of these tokens (one document per row unless segments say otherwise)."""
  tokens = jnp.asarray(tokens, jnp.int32)
  b, t = tokens.shape
  segments = jnp.ones((b, t), jnp.int32) if segments is None else jnp.asarray(segments)
  positions = (jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None
               else jnp.asarray(positions))
  return {'inputs': tokens, 'positions': positions, 'segment_ids': segments}


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, batch):
  return model.apply({'params': params}, batch)


def logits(model, params, tokens, segments=None, positions=None):
  # One compiled forward per model: op-by-op dispatch of the eager forward took most of these
  # tests' time.
  return _apply(model, params, batch_of(tokens, segments, positions))


SWITCHES = [
    {}, {'scan_layers': True}, {'norm': 'rmsnorm'}, {'norm_position': 'post'}, {'activation': 'relu'},
    {'activation': 'swiglu'}, {'activation': 'geglu'}, {'positional': 'sinusoidal'},
    {'positional': 'none'}, {'tie_embeddings': False}, {'use_bias': False},
    {'num_kv_heads': 2}, {'num_kv_heads': 1},
    {'positional': 'rope'}, {'positional': 'rope', 'rope_fraction': 0.5, 'num_kv_heads': 2},
    {'positional': 'alibi'}, {'positional': 'alibi', 'num_kv_heads': 1},
    {'positional': 't5_bias'}, {'positional': 'shaw'},
]


@pytest.mark.parametrize('switch', SWITCHES, ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()) or 'default')
def test_causal_every_switch(switch):
  """Changing token t changes no logit before t, and does change logits from t on."""
  model, params = make(**switch)
  x = np.random.RandomState(0).randint(0, V, (2, T))
  y = x.copy()
  y[:, 7] = (y[:, 7] + 1) % V
  a, b = logits(model, params, x), logits(model, params, y)
  assert a.shape == (2, T, V) and a.dtype == jnp.float32
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-4


@pytest.mark.parametrize('positional', ['learned', 'sinusoidal', 'none', 'rope', 'alibi',
                                        't5_bias', 'shaw'])
def test_packed_documents_are_independent(positional):
  """A document packed after another gives the logits it gives alone at the row start."""
  model, params = make(positional=positional)
  rng = np.random.RandomState(1)
  doc_a, doc_b = rng.randint(0, V, 5), rng.randint(0, V, 7)
  packed = np.concatenate([doc_a, doc_b])[None]
  segments = np.array([[1] * 5 + [2] * 7])
  positions = np.array([list(range(5)) + list(range(7))])
  alone = logits(model, params, np.pad(doc_b, (0, 5))[None])[:, :7]
  together = logits(model, params, packed, segments, positions)[:, 5:]
  np.testing.assert_allclose(alone, together, atol=1e-5)
  # Without the segment mask the first document leaks into the second.
  leaky = logits(model, params, packed, np.ones_like(segments), positions)[:, 5:]
  assert np.abs(np.asarray(leaky - alone)).max() > 1e-4


def test_presets_and_parameter_layout():
  c = config_lib.default_config()
  apply_preset(c, 'llama')
  assert (c.model.norm, c.model.activation, c.model.use_bias, c.model.tie_embeddings) == (
      'rmsnorm', 'swiglu', False, False)
  model, params = make(scan_layers=False, **{k: c.model[k] for k in (
      'norm', 'activation', 'use_bias', 'tie_embeddings', 'positional')})
  layer = params['layer_0']
  assert set(layer['mlp']) == {'wi', 'wi_gate', 'wo'}
  assert 'bias' not in layer['attention']['query'] and 'bias' not in layer['norm_mlp']
  assert params['unembed']['kernel'].shape == (32, V)
  # d_ff for gated MLPs: 8/3 d rounded up to 64 keeps the 4x MLP's parameter count.
  assert layer['mlp']['wi']['kernel'].shape == (32, 128)
  _, gpt2 = make()
  assert 'unembed' not in gpt2 and gpt2['positional']['embedding'].shape == (T, 32)


def test_grouped_query_heads_shapes():
  _, params = make(num_kv_heads=1, scan_layers=False)
  att = params['layer_0']['attention']
  assert att['query']['kernel'].shape == (32, 4, 8)
  assert att['key']['kernel'].shape == (32, 1, 8) and att['value']['kernel'].shape == (32, 1, 8)


def test_gqa_equals_mha_with_repeated_kv_heads():
  """GQA with K heads is MHA whose key/value heads are each repeated N/K times."""
  gqa, p = make(num_kv_heads=2, scan_layers=False)
  mha, _ = make(scan_layers=False)
  q = jax.tree.map(lambda x: x, p)
  for i in range(2):
    att = q[f'layer_{i}']['attention']
    for name in ('key', 'value'):
      att[name] = {'kernel': jnp.repeat(att[name]['kernel'], 2, axis=1),
                   'bias': jnp.repeat(att[name]['bias'], 2, axis=0)}
  x = np.random.RandomState(2).randint(0, V, (2, T))
  np.testing.assert_allclose(logits(gqa, p, x), logits(mha, q, x), atol=1e-5)


def test_every_parameter_has_logical_axes():
  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.data.seq_len = 1, 32, 4, T
  c.model.scan_layers = False
  model = Decoder(ModelConfig.from_config(config_lib.resolve(c, vocab_size=V)))
  boxed = jax.eval_shape(lambda: step_lib.init_params(model, jax.random.PRNGKey(0),
                                                      {'length': T}))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  specs = {jax.tree_util.keystr(p): s for p, s in
           jax.tree_util.tree_flatten_with_path(nn.get_partition_spec(boxed))[0]}
  assert specs["['embed']['embedding']"] == jax.sharding.PartitionSpec('vocab', 'embed')
  assert specs["['layer_0']['mlp']['wi']['kernel']"] == jax.sharding.PartitionSpec('embed', 'mlp')
  assert specs["['layer_0']['attention']['query']['kernel']"] == jax.sharding.PartitionSpec(
      'embed', 'heads', 'kv')


def test_dropout_only_when_training():
  model, params = make(dropout=0.5)
  x = jnp.asarray(np.random.RandomState(3).randint(0, V, (1, T)), jnp.int32)
  det = model.apply({'params': params}, batch_of(x))
  np.testing.assert_allclose(det, model.apply({'params': params}, batch_of(x)))
  noisy = model.apply({'params': params}, batch_of(x), deterministic=False,
                      rngs={'dropout': jax.random.PRNGKey(0)})
  assert np.abs(np.asarray(noisy - det)).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params():
  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.data.seq_len = 1, 32, 4, T
  c.model.scan_layers = False
  c.train.compute_dtype = 'bfloat16'
  model = Decoder(ModelConfig.from_config(config_lib.resolve(c, vocab_size=V)))
  params = nn.meta.unbox(step_lib.init_params(model, jax.random.PRNGKey(0), {'length': T}))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  out = model.apply({'params': params}, batch_of(jnp.zeros((1, T), jnp.int32)))
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()



def test_scanned_layers_equal_the_python_loop():
  """nn.scan stacks the loop's layers on a leading 'layers' axis; same params, same logits."""
  loop, p_loop = make(scan_layers=False, dropout=0.0)
  scan, p_scan = make(scan_layers=True)
  assert set(p_scan) == {'embed', 'positional', 'layers', 'norm_final'}
  assert p_scan['layers']['mlp']['wi']['kernel'].shape == (2, 32, 128)
  stacked = {k: v for k, v in p_loop.items() if not k.startswith('layer_')}
  stacked['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), p_loop['layer_0'],
                                   p_loop['layer_1'])
  x = np.random.RandomState(5).randint(0, V, (2, T))
  np.testing.assert_allclose(jax.jit(lambda p: logits(scan, p, x))(stacked),
                             jax.jit(lambda p: logits(loop, p, x))(p_loop), atol=1e-5)
  boxed = jax.eval_shape(lambda: step_lib.init_params(scan, jax.random.PRNGKey(0),
                                                      {'length': T}))
  spec = nn.get_partition_spec(boxed)['layers']['attention']['query']['kernel']
  assert spec == jax.sharding.PartitionSpec('layers', 'embed', 'heads', 'kv')


@pytest.mark.slow
@pytest.mark.parametrize('policy,scan_layers', [('full', True)])
def test_remat_keeps_values_and_gradients(policy, scan_layers):
  plain, params = make(scan_layers=scan_layers)
  remat, _ = make(scan_layers=scan_layers, remat=policy)
  x = jnp.asarray(np.random.RandomState(6).randint(0, V, (2, T)), jnp.int32)

  def loss_and_grad(model):
    return jax.jit(jax.value_and_grad(lambda p: logits(model, p, x).std()))(params)

  (l_plain, g_plain), (l_remat, g_remat) = loss_and_grad(plain), loss_and_grad(remat)
  np.testing.assert_allclose(l_remat, l_plain, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('positional', ['rope', pytest.param('alibi', marks=pytest.mark.slow),
                                        pytest.param('shaw', marks=pytest.mark.slow)])
def test_attention_impls_give_the_same_values(positional):
  """Every model.attention_impl computes the same function and gradient, on packed rows with
  padding: with rotated q/k (rope), a logits bias (alibi, as t5_bias) and relative key/value
  vectors (shaw, which only einsum and blocked take)."""
  impls = ['blocked'] + ([] if positional == 'shaw' else ['jax_xla', 'auto'])
  base, params = make(positional=positional, attention_impl='einsum', scan_layers=False)
  tokens = np.random.RandomState(7).randint(0, V, (2, T))
  segments = np.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
  positions = np.array([list(range(5)) + list(range(7)), list(range(9)) + [0] * 3])

  def out_and_grad(model):
    fn = lambda p: logits(model, p, tokens, segments, positions)  # noqa: E731
    return jax.jit(lambda p: (fn(p), jax.grad(lambda q: fn(q)[segments > 0].std())(p)))(params)

  want, grad_want = out_and_grad(base)
  for impl in impls:
    model, _ = make(positional=positional, attention_impl=impl, scan_layers=False)
    got, grad = out_and_grad(model)
    np.testing.assert_allclose(got[segments > 0], want[segments > 0], atol=2e-5, err_msg=impl)
    for a, b in zip(jax.tree.leaves(grad_want), jax.tree.leaves(grad)):
      np.testing.assert_allclose(a, b, atol=2e-5, err_msg=impl)


def test_auto_attention_is_picked_for_the_platform_compiled_for():
  from research.model import attention
  pick = attention.resolve_impl
  assert pick('auto', dtype='bfloat16', has_relative_kv=False, platform='gpu') == 'jax_cudnn'
  assert pick('auto', dtype='float32', has_relative_kv=False, platform='gpu') == 'einsum'
  assert pick('auto', dtype='bfloat16', has_relative_kv=True, platform='gpu') == 'einsum'
  assert pick('auto', dtype='bfloat16', has_relative_kv=False, platform='tpu') == 'einsum'
  assert pick('auto', dtype='float32', has_relative_kv=False, platform='cpu') == 'blocked'
  assert pick('einsum', dtype='float32', has_relative_kv=False, platform='cpu') == 'einsum'
  assert pick('auto', dtype='float32', has_relative_kv=False) == 'blocked'  # these tests' CPU


def test_jax_attention_gets_is_causal_and_only_the_segment_mask(monkeypatch):
  """A causal Mask reaches jax.nn.dot_product_attention as is_causal=True (cuDNN's causal kernel
  skips the blocks above the diagonal) plus the segment-and-padding mask, with the values of the
  einsum path."""
  from research.model import attention
  seen, real = {}, jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    seen.update(kwargs)
    return real(*args, **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', spy)
  segments = jnp.asarray([[1] * 3 + [2] * 3 + [0] * 2])
  rng = np.random.RandomState(3)
  q, k, v = (jnp.asarray(rng.randn(1, 8, 2, 4), jnp.float32) for _ in range(3))
  mask = attention.Mask(segments, segments, pattern='causal')
  got = attention.attend(q, k, v, mask, impl='jax_xla')
  assert seen['is_causal'] is True
  s = np.asarray(segments)[0]
  np.testing.assert_array_equal(np.asarray(seen['mask'])[0, 0],
                                (s[:, None] == s[None, :]) & (s[None, :] > 0))
  want = attention.attend(q, k, v, mask, impl='einsum')
  np.testing.assert_allclose(np.asarray(got)[0, :6], np.asarray(want)[0, :6], atol=1e-6)


def test_blocked_attention_skips_the_keys_after_each_query_block():
  """Same output as the full product, from blocks that never see later keys."""
  from research.model import attention
  rng = np.random.RandomState(8)
  q, k, v = (jnp.asarray(rng.randn(2, 16, 4, 8), jnp.float32) for _ in range(3))
  ones = jnp.ones((2, 16), jnp.int32)
  mask = attention.Mask(ones, ones, pattern='causal')
  full = attention.dot_product_attention(q, k, v, mask)
  blocked = attention.blocked_causal_attention(q, k, v, mask, num_blocks=4)
  np.testing.assert_allclose(blocked, full, atol=1e-6)
  # A later key changed: the first block's output cannot move (it is never read there).
  k2 = k.at[:, 12:].set(100.0)
  np.testing.assert_allclose(attention.blocked_causal_attention(q, k2, v, mask)[:, :4],
                             blocked[:, :4], atol=1e-6)
  # With packed segments and padding, from a Mask built block by block or from the full array.
  segments = jnp.asarray([[1] * 6 + [2] * 7 + [0] * 3, [1] * 16])
  lazy = attention.Mask(segments, segments, pattern='causal')
  from_lazy = attention.blocked_causal_attention(q, k, v, lazy, num_blocks=4)
  from_array = attention.dot_product_attention(q, k, v, attention.attention_mask(segments))
  keep = np.asarray(segments > 0)
  np.testing.assert_allclose(np.asarray(from_lazy)[keep], np.asarray(from_array)[keep], atol=1e-6)


def test_mask_blocks_match_the_full_mask():
  """Mask.block builds any block of the [B, 1, T, T] mask: packed rows, padding, causal or not."""
  from research.model import attention
  segments = jnp.asarray([[1] * 5 + [2] * 7 + [0] * 4, [3] * 16])
  for causal in (True, False):
    mask = attention.Mask(segments, segments, pattern='causal' if causal else 'full')
    full = np.asarray(mask.block())
    t = np.arange(16)
    same = (np.asarray(segments)[:, :, None] == np.asarray(segments)[:, None, :]) & (
        np.asarray(segments)[:, None, :] > 0)
    want = same & (t[None, :] <= t[:, None]) if causal else same
    np.testing.assert_array_equal(full[:, 0], want)
    np.testing.assert_array_equal(mask.block(4, 12, 2, 16), full[:, :, 4:12, 2:16])


def test_norms_backward_matches_flax_autodiff():
  """layers.normalize's hand-written backward against autodiff of flax's LayerNorm and RMSNorm."""
  from research.model import layers
  rng = np.random.RandomState(9)
  x = jnp.asarray(rng.randn(3, 5, 32) * 2 + 0.5, jnp.float32)
  scale, bias = (jnp.asarray(rng.randn(32), jnp.float32) for _ in range(2))
  weight = jnp.asarray(rng.randn(3, 5, 32), jnp.float32)
  for kind, ref in (('layernorm', nn.LayerNorm(epsilon=1e-5)), ('rmsnorm', nn.RMSNorm(1e-5))):
    ours = layers.norm(kind, 1e-5, True, jnp.float32, 'n')
    ref_params = {'params': {'scale': scale, **({'bias': bias} if kind == 'layernorm' else {})}}

    def loss(module, params, x):
      return (jnp.tanh(module.apply(params, x)) * weight).sum()

    for a, b in zip(jax.grad(loss, argnums=(1, 2))(ours, ref_params, x),
                    jax.grad(loss, argnums=(1, 2))(ref, ref_params, x)):
      for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-5, err_msg=kind)
    np.testing.assert_allclose(ours.apply(ref_params, x), ref.apply(ref_params, x), atol=1e-5)


class _FavoursPadding:
  """A stand-in model whose logits favour ids 10 and 11 (padding when the tokenizer has 10) and,
  among the real ids, id 3; with a cache (cached decoding) it returns the cache as given."""
  cfg = types.SimpleNamespace(num_layers=1, num_kv_heads=1, head_dim=1, dtype='float32',
                              scan_layers=False, positional='none', max_len=8)

  def apply(self, variables, batch, cache=None):
    n, length = batch['inputs'].shape
    logits = jnp.zeros((n, length, 12)).at[..., 3].set(1.0).at[..., 10:].set(5.0)
    return logits if cache is None else (logits, cache)


@pytest.mark.parametrize('cached', [True, False], ids=['cached', 'recompute'])
def test_sampling_never_draws_the_padded_vocabulary_rows(cached):
  """Both samplers (research/model/decode.py): cached decoding and the full-recompute reference."""
  from research.data import features
  from research.model import decode
  model = _FavoursPadding()

  def draw(**kwargs):
    kwargs.update(num_samples=64, max_new_tokens=7, seed=0, eot_id=0,
                  converter=features.DecoderOnly())
    if cached:
      return decode.generate(model, {}, [[0]], **kwargs)[0]
    return decode.generate_recompute(model, {}, [0], model_lengths={'length': 8}, **kwargs)

  assert draw(temperature=0.0, vocab_size=10) == [[3] * 7] * 64
  ids = {i for row in draw(temperature=1.0, vocab_size=10) for i in row}
  assert ids <= set(range(10)) and len(ids) > 3
  # Unpadded, the same logits give the padding ids almost every draw: the cut above is real.
  drawn = draw(temperature=1.0, vocab_size=12)
  assert sum(i >= 10 for row in drawn for i in row) > 0.9 * 64 * 7
  if cached:  # top-k and top-p cut within the ids that may be drawn
    assert draw(temperature=1.0, vocab_size=10, top_k=1) == [[3] * 7] * 64
    assert draw(temperature=1.0, vocab_size=10, top_p=0.2) == [[3] * 7] * 64


def test_gpt2_124m_bench_preset_has_gpt2_small_shapes():
  """experiments/bench.py:gpt2_124m, the GPU benchmark: GPT-2 small with nanoGPT's padded vocabulary
  (124,439,808 parameters at 50,257 rows, plus 47 * 768), abstractly initialized (no compute)."""
  from experiments import bench
  from research.train import flops
  c = bench.get_config('gpt2_124m')
  config_lib.validate(c)
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=257))
  assert (cfg.vocab_size, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_ff) == (
      50304, 12, 768, 12, 3072)
  shapes = jax.eval_shape(lambda: step_lib.init_params(Decoder(cfg), jax.random.PRNGKey(0),
                                                       {'length': 1024}))
  params = nn.meta.unbox(shapes)
  assert sum(x.size for x in jax.tree.leaves(params)) == 124_439_808 + 47 * 768
  assert params['embed']['embedding'].shape == (50304, 768)
  n_matmul = 12 * (4 * 768 ** 2 + 2 * 768 * 3072) + 768 * 50304
  assert flops.train_flops_per_token(cfg, 1024) == 6 * n_matmul + 6 * 12 * 1024 * 768
  assert cfg.dtype == 'bfloat16' and c.train.batch_size * c.data.seq_len == 32 * 1024
