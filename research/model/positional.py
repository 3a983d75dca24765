"""Positional schemes behind `model.positional`, through three hooks the blocks never look inside.

1. `embed`: added to the token embeddings (learned, sinusoidal).
2. `transform_qk`: applied to queries and keys in every layer (rope).
3. `attention_bias`: an `AttentionBias` the attention function adds, computed once per forward and
   shared by all layers: logits bias (alibi, t5_bias) or relative key/value vectors (shaw).
`none` (NoPE) uses none of them: causal masking alone carries order.

Every scheme reads positions, which restart at each packed document, never the array index;
the attention mask keeps documents apart, so relative schemes see only within-document offsets.
Queries and keys have their own positions (a query decoded against cached keys, or a decoder's
queries over an encoder's keys). A stack that attends both ways (an encoder, a prefix LM) uses the
bidirectional form of each relative scheme: T5's buckets with `bidirectional=True`, ALiBi by
distance either way, Shaw over negative and positive distances (as in every stack). In
cross-attention no scheme applies: it relates positions of two different sequences.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.model.attention import AttentionBias


def sinusoidal(positions_BT, d: int):
  """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al. 2017).

  Computed from the positions rather than looked up, so any length works.
  """
  freq_F = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angle_BTF = positions_BT.astype(jnp.float32)[..., None] * freq_F
  # Interleave so even dimensions carry sin and odd ones cos, exactly as in the paper.
  return jnp.stack([jnp.sin(angle_BTF), jnp.cos(angle_BTF)], axis=-1).reshape(
      *positions_BT.shape, d)


def rope_dims(head_dim: int, fraction: float) -> int:
  """Dimensions rotated by RoPE: fraction * head_dim rounded down to an even number."""
  return 2 * int(fraction * head_dim / 2)


def rope(x_BTNH, positions_BT, *, theta: float, layout: str, fraction: float = 1.0):
  """Rotary embedding (Su et al. 2021) of the first rope_dims(H, fraction) dims; the rest pass.

  Pair i turns by angle pos * theta^(-2i/R), R the rotated dims. layout 'half' pairs dim i with
  i + R/2 (GPT-NeoX, HF Llama); 'interleaved' pairs 2i with 2i + 1 (RoFormer, Meta Llama). The two
  give the same scores up to a permutation of the projection's dims, but not the same checkpoints.
  """
  r = rope_dims(x_BTNH.shape[-1], fraction)
  freq_F = theta ** (-jnp.arange(0, r, 2, dtype=jnp.float32) / r)
  angle_BT1F = (positions_BT.astype(jnp.float32)[..., None] * freq_F)[:, :, None]
  cos_BT1F, sin_BT1F = jnp.cos(angle_BT1F), jnp.sin(angle_BT1F)
  # Rotate in float32: bfloat16 angles lose the low-frequency pairs at long positions.
  rot_BTNR = x_BTNH[..., :r].astype(jnp.float32)
  if layout == 'half':
    x1_BTNF, x2_BTNF = rot_BTNR[..., :r // 2], rot_BTNR[..., r // 2:]
  else:
    x1_BTNF, x2_BTNF = rot_BTNR[..., 0::2], rot_BTNR[..., 1::2]
  y1_BTNF = x1_BTNF * cos_BT1F - x2_BTNF * sin_BT1F
  y2_BTNF = x2_BTNF * cos_BT1F + x1_BTNF * sin_BT1F
  if layout == 'half':
    rot_BTNR = jnp.concatenate([y1_BTNF, y2_BTNF], axis=-1)
  else:
    rot_BTNR = jnp.stack([y1_BTNF, y2_BTNF], axis=-1).reshape(rot_BTNR.shape)
  return jnp.concatenate([rot_BTNR.astype(x_BTNH.dtype), x_BTNH[..., r:]], axis=-1)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Per-head ALiBi slopes (Press et al. 2022): 2^(-8/n), its square, ... for n a power of 2.

  Otherwise, the paper's rule: the slopes for p = 2^floor(log2 n) heads, then every other slope
  for 2p heads, as many as the n - p heads left.
  """
  def geometric(n):
    return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
  p = 2 ** int(math.floor(math.log2(num_heads)))
  return np.array(geometric(p) + geometric(2 * p)[0::2][:num_heads - p])


def t5_relative_bucket(relative_position, *, bidirectional: bool, num_buckets: int,
                       max_distance: int):
  """T5's bucket for relative_position = key position - query position (mesh-tf, t5x).

  Half the buckets hold distances 0, 1, ... exactly; the rest are log-spaced up to max_distance,
  and farther distances share the last. Causal: only keys at or before the query (n = -min(rp, 0)).
  Bidirectional: half the buckets for each sign, keys after the query in the upper half.
  """
  ret = 0
  n = -jnp.asarray(relative_position)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  # t5x's eps keeps exact powers (e.g. distance 16 of 8..128) from rounding down a bucket.
  val_if_large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(n < max_exact, n, val_if_large)


def check_learned_length(cfg, length: int, what: str) -> None:
  """ConfigError when sequences of `length` tokens could read positions past a learned position
  table (cfg: a ModelConfig or the config's model section); `what` names the setting at fault."""
  if cfg.positional == 'learned' and length > cfg.max_len:
    raise ConfigError(
        f'{what}: {length} tokens read positions up to {length - 1}, past the learned position '
        f'table of model.max_len={cfg.max_len} rows; train with a larger model.max_len (rows past '
        f'the training length stay untrained) or stay within {cfg.max_len} tokens')


def transform_qk(cfg, q_BTNH, k_BSKH, q_positions_BT, k_positions_BS):
  """The per-layer hook on queries and keys (rope: each rotated by its own position); holds no
  parameters, so scanned layers and any other transform can call it."""
  if cfg.positional == 'rope':
    kwargs = dict(theta=cfg.rope_theta, layout=cfg.rope_layout, fraction=cfg.rope_fraction)
    return rope(q_BTNH, q_positions_BT, **kwargs), rope(k_BSKH, k_positions_BS, **kwargs)
  return q_BTNH, k_BSKH


class Positional(nn.Module):
  """The scheme `cfg.positional` behind three hooks; cfg is a transformer.ModelConfig.

  bidirectional: the stack's queries see keys after them too (encoder, prefix LM).
  """
  cfg: object
  bidirectional: bool = False

  def setup(self):
    cfg = self.cfg

    def param(name, axes, shape):
      return self.param(name, nn.with_logical_partitioning(
          nn.initializers.normal(cfg.init_std), axes), shape)

    if cfg.positional == 'learned':
      self.embedding = param('embedding', (None, 'embed'), (cfg.max_len, cfg.d_model))
    elif cfg.positional == 't5_bias':
      # One scalar per head per bucket, shared by all layers of the stack as in T5.
      self.rel_bias = param('rel_bias', (None, 'heads'), (cfg.t5_num_buckets, cfg.num_heads))
    elif cfg.positional == 'shaw':
      # a^K and a^V of Shaw et al. 2018: shared across heads (the paper) and, through this hook,
      # across layers too (tensor2tensor keeps a pair per layer).
      shape = (2 * cfg.shaw_max_distance + 1, cfg.head_dim)
      self.rel_key = param('rel_key', (None, 'kv'), shape)
      self.rel_value = param('rel_value', (None, 'kv'), shape)

  def embed(self, x_BTD, positions_BT):
    dtype = jnp.dtype(self.cfg.dtype)
    if self.cfg.positional == 'learned':
      # A position past the table has no embedding: it reads NaN, so the logits and the loss turn
      # NaN instead of silently standing in another row (jnp.take's default clamps). Callers that
      # know their lengths refuse earlier, in one line (check_learned_length).
      return x_BTD + jnp.take(self.embedding, positions_BT, axis=0, mode='fill',
                              fill_value=jnp.nan).astype(dtype)
    if self.cfg.positional == 'sinusoidal':
      # The paper scales token embeddings by sqrt(d): at std-0.02 initialisation the unit-amplitude
      # table would otherwise swamp them.
      pe_BTD = sinusoidal(positions_BT, self.cfg.d_model)
      return x_BTD * math.sqrt(self.cfg.d_model) + pe_BTD.astype(dtype)
    return x_BTD

  def transform_qk(self, q_BTNH, k_BSKH, q_positions_BT, k_positions_BS):
    return transform_qk(self.cfg, q_BTNH, k_BSKH, q_positions_BT, k_positions_BS)

  def attention_bias(self, q_positions_BT, k_positions_BS):
    """An AttentionBias for the attention function of queries at q_positions over keys at
    k_positions, or None."""
    cfg = self.cfg
    # Key position minus query position; pairs across documents are masked whatever they hold.
    rel_BTS = k_positions_BS[:, None, :] - q_positions_BT[:, :, None]
    if cfg.positional == 'alibi':
      # -slope * (query - key) for the keys a causal query sees, added after the 1/sqrt(d)
      # scaling; attending both ways, the symmetric -slope * |query - key|.
      slopes_1N11 = jnp.asarray(alibi_slopes(cfg.num_heads), jnp.float32)[None, :, None, None]
      distance_B1TS = rel_BTS[:, None].astype(jnp.float32)
      if self.bidirectional:
        distance_B1TS = -jnp.abs(distance_B1TS)
      return AttentionBias(logits_BNTS=slopes_1N11 * distance_B1TS)
    if cfg.positional == 't5_bias':
      bucket_BTS = t5_relative_bucket(rel_BTS, bidirectional=self.bidirectional,
                                      num_buckets=cfg.t5_num_buckets,
                                      max_distance=cfg.t5_max_distance)
      # T5 leaves its logits unscaled; ours keep 1/sqrt(d) before the bias, which is learned and
      # so adapts to the scale.
      return AttentionBias(
          logits_BNTS=jnp.take(self.rel_bias, bucket_BTS, axis=0).transpose(0, 3, 1, 2))
    if cfg.positional == 'shaw':
      k = cfg.shaw_max_distance
      index_BTS = jnp.clip(rel_BTS, -k, k) + k
      return AttentionBias(rel_key_DH=self.rel_key, rel_value_DH=self.rel_value,
                           rel_index_BTS=index_BTS)
    return None
