"""Multi-head / grouped-query attention with an explicit mask and optional position terms."""

from typing import Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from research.model import layers

# Differentiate softmax by its closed form instead of through its max-subtraction: faster on the
# CPU (docs/performance.md), the same values.
jax.config.update('jax_softmax_custom_jvp', True)

# Which keys a query may see, besides being in its segment (Mask.pattern):
#   causal  keys at or before the query (a decoder);
#   prefix  causal, and every pair inside the bidirectional prefix (a prefix LM's inputs);
#   full    every key of the sequence (an encoder);
#   cross   every key of another sequence (a decoder's queries over the encoder's output).
PATTERNS = ('causal', 'prefix', 'full', 'cross')


@flax.struct.dataclass
class Mask:
  """Which keys each query may attend: the same segment (ids > 0; 0 marks padding, which attends
  nothing and is attended by nothing), and what `pattern` allows (PATTERNS).

  index_q_BT / index_k_BS: each query's and key's index in its sequence, which the causal
  comparison uses (None: 0, 1, ... along the array). A query decoded one at a time against a
  cache of keys passes its own index, so that it sees every cached key before it.
  prefix_q_BT / prefix_k_BS (pattern 'prefix'): True on the prefix's queries and keys.

  Kept as per-token arrays rather than a [B, 1, T, S] array: the attention functions build each
  block they compute where they use it (`block`), so nothing of size T^2 is stored or saved for
  the backward.
  """
  segment_ids_q_BT: jax.Array
  segment_ids_k_BS: jax.Array
  index_q_BT: Optional[jax.Array] = None
  index_k_BS: Optional[jax.Array] = None
  prefix_q_BT: Optional[jax.Array] = None
  prefix_k_BS: Optional[jax.Array] = None
  pattern: str = flax.struct.field(pytree_node=False, default='causal')

  def __post_init__(self):
    if self.pattern not in PATTERNS:
      raise ValueError(f'mask pattern {self.pattern!r} is not one of {PATTERNS}')
    if self.pattern == 'prefix' and (self.prefix_q_BT is None or self.prefix_k_BS is None):
      raise ValueError("mask pattern 'prefix' needs prefix_q_BT and prefix_k_BS")

  @property
  def causal(self) -> bool:
    return self.pattern in ('causal', 'prefix')

  @property
  def plain_causal(self) -> bool:
    """Causal over one sequence indexed 0, 1, ...: what blocked attention and is_causal assume."""
    return (self.pattern == 'causal' and self.index_q_BT is None and self.index_k_BS is None
            and self.segment_ids_q_BT.shape[1] == self.segment_ids_k_BS.shape[1])

  def segments_only(self) -> 'Mask':
    """The same segments and padding with every other pair allowed."""
    return Mask(self.segment_ids_q_BT, self.segment_ids_k_BS, pattern='full')

  def block(self, q_start: int = 0, q_end=None, k_start: int = 0, k_end=None):
    """[B, 1, q_end - q_start, k_end - k_start] bool for those query and key index ranges."""
    seg_q_BT = self.segment_ids_q_BT[:, q_start:q_end]
    seg_k_BS = self.segment_ids_k_BS[:, k_start:k_end]
    mask_BTS = (seg_q_BT[:, :, None] == seg_k_BS[:, None, :]) & (seg_k_BS[:, None, :] > 0)
    if self.causal:
      t, s = seg_q_BT.shape[1], seg_k_BS.shape[1]
      if self.index_q_BT is None:
        q_BT1 = jax.lax.broadcasted_iota(jnp.int32, (1, t, 1), 1) + q_start
      else:
        q_BT1 = self.index_q_BT[:, q_start:q_end, None]
      if self.index_k_BS is None:
        k_B1S = jax.lax.broadcasted_iota(jnp.int32, (1, 1, s), 2) + k_start
      else:
        k_B1S = self.index_k_BS[:, None, k_start:k_end]
      allowed_BTS = k_B1S <= q_BT1
      if self.pattern == 'prefix':
        allowed_BTS |= ((self.prefix_q_BT[:, q_start:q_end, None] > 0)
                        & (self.prefix_k_BS[:, None, k_start:k_end] > 0))
      mask_BTS &= allowed_BTS
    return mask_BTS[:, None]


def attention_mask(segment_ids_BT, *, pattern: str = 'causal'):
  """[B, 1, T, T] bool: Mask(segment_ids_BT, segment_ids_BT, pattern=pattern) as an array."""
  return Mask(segment_ids_BT, segment_ids_BT, pattern=pattern).block()


def mask_array(mask):
  """A Mask or a [B, 1, T, S] bool array, as the array."""
  return mask.block() if isinstance(mask, Mask) else mask


@flax.struct.dataclass
class AttentionBias:
  """Position terms the attention function adds without knowing which scheme made them.

  Every field is optional, and each is computed once per forward and shared by all layers.
  logits_BNTS: added to the scaled logits (ALiBi, T5 bias); N is the query heads or 1.
  rel_key_DH, rel_value_DH, rel_index_BTS: relative representations (Shaw et al. 2018), one
    vector per distance bucket d and the bucket of each query/key pair, r[t, s] = table[index[t, s]]:
    logits[t, s] += q_t . r_key[t, s] inside the 1/sqrt(H) scaling; out_t += sum_s p_ts r_value[t, s].
    Kept as tables and indices (O(B T S) memory, not O(B T S H)): the attention takes q against
    every bucket in one matmul and gathers, and sums the probabilities per bucket before one
    matmul with the value table.
  """
  logits_BNTS: Optional[jax.Array] = None
  rel_key_DH: Optional[jax.Array] = None
  rel_value_DH: Optional[jax.Array] = None
  rel_index_BTS: Optional[jax.Array] = None


def bucket_sums(x_BKGTS, index_BTS, num_buckets: int):
  """sum over s of x[..., t, s] into bucket index[b, t, s]: [B, K, G, T, num_buckets]."""
  onto = jnp.zeros(x_BKGTS.shape[:-1] + (num_buckets,), x_BKGTS.dtype)
  b, k, g, t, _ = x_BKGTS.shape
  lead = tuple(jnp.arange(size).reshape((-1,) + (1,) * (4 - axis))
               for axis, size in enumerate((b, k, g, t)))
  return onto.at[(*lead, index_BTS[:, None, None])].add(x_BKGTS)


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask,
                          bias: Optional[AttentionBias] = None, *, heads_major: bool = False):
  """softmax(q (k + r_k)^T / sqrt(H) + b) (v + r_v), K key/value heads shared by N // K query heads.

  mask: a Mask or a [B, 1, T, S] bool array. r_k[t, s] = bias.rel_key_DH[bias.rel_index_BTS[t, s]],
  r_v likewise, and b = bias.logits_BNTS, each only where given. heads_major: keys and values
  come as [B, K, S, H] (a decoding cache's layout) instead.
  """
  bias = bias or AttentionBias()
  b, t, n, h = q_BTNH.shape
  k = k_BSKH.shape[1 if heads_major else 2]
  kv = 'bksh' if heads_major else 'bskh'
  q_BTKGH = q_BTNH.reshape(b, t, k, n // k, h)
  logits_BKGTS = jnp.einsum(f'btkgh,{kv}->bkgts', q_BTKGH, k_BSKH).astype(jnp.float32)
  if bias.rel_key_DH is not None:
    # Shaw et al. eq. 4: the relative key joins the key inside the scaled product.
    qr_BKGTD = jnp.einsum('btkgh,dh->bkgtd', q_BTKGH, bias.rel_key_DH.astype(q_BTNH.dtype))
    logits_BKGTS += jnp.take_along_axis(qr_BKGTD, bias.rel_index_BTS[:, None, None], axis=-1,
                                        mode='clip').astype(jnp.float32)
  logits_BKGTS *= h ** -0.5
  if bias.logits_BNTS is not None:
    # Query head n = kv head * (N // K) + group index, the order of the reshape of q above.
    logits_BNTS = bias.logits_BNTS.astype(jnp.float32)
    heads = logits_BNTS.shape[1]
    logits_BKGTS += logits_BNTS.reshape(logits_BNTS.shape[0], min(heads, k), -1,
                                        *logits_BNTS.shape[-2:])
  logits_BKGTS = jnp.where(mask_array(mask)[:, :, None], logits_BKGTS, jnp.finfo(jnp.float32).min)
  probs32_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1)
  out_BTKGH = jnp.einsum(f'bkgts,{kv}->btkgh', probs32_BKGTS.astype(v_BSKH.dtype), v_BSKH)
  if bias.rel_value_DH is not None:
    # Summed per bucket in float32 (a scatter-add accumulates one term at a time).
    table_DH = bias.rel_value_DH.astype(jnp.float32)
    per_bucket_BKGTD = bucket_sums(probs32_BKGTS, bias.rel_index_BTS, table_DH.shape[0])
    out_BTKGH += jnp.einsum('bkgtd,dh->btkgh', per_bucket_BKGTD, table_DH).astype(v_BSKH.dtype)
  return out_BTKGH.reshape(b, t, n, h)


IMPLS = ('auto', 'einsum', 'blocked', 'jax_xla', 'jax_cudnn')


def resolve_impl(impl: str, *, dtype, has_relative_kv: bool, platform: Optional[str] = None
                 ) -> str:
  """'auto': cuDNN flash attention on GPU where it applies (16-bit, no Shaw terms); on CPU the
  blocked causal path (faster than einsum there: docs/performance.md); einsum otherwise.
  platform: the devices the step is compiled for ('cpu', 'gpu', 'tpu'); None: JAX's default
  backend."""
  if impl != 'auto':
    return impl
  backend = platform or jax.default_backend()
  if (backend == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and not has_relative_kv):
    return 'jax_cudnn'
  return 'blocked' if backend == 'cpu' else 'einsum'


def blocked_causal_attention(q_BTNH, k_BSKH, v_BSKH, mask, bias=None, *, num_blocks=4):
  """Causal attention with the queries in blocks, each attending only to keys up to its end.

  The same values as dot_product_attention under a causal mask, with about (n + 1) / 2n of its
  score FLOPs for n blocks: the key blocks after each query block are never computed. Any other
  mask (a prefix, bidirectional, cross-attention, a query offset into cached keys), or a length
  the blocks do not divide, is computed whole by dot_product_attention, which honours it.
  """
  bias = bias or AttentionBias()
  t = q_BTNH.shape[1]
  plain = mask.plain_causal if isinstance(mask, Mask) else False
  if t % num_blocks or k_BSKH.shape[1] != t or not plain:
    return dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask, bias)
  size = t // num_blocks
  outs = []
  for i in range(num_blocks):
    q_sl, k_end = slice(i * size, (i + 1) * size), (i + 1) * size

    def cut(x, q_axis, k_axis):
      if x is None:
        return None
      index = [slice(None)] * x.ndim
      if x.shape[q_axis] != 1:
        index[q_axis] = q_sl
      if x.shape[k_axis] != 1:
        index[k_axis] = slice(0, k_end)
      return x[tuple(index)]

    block_mask = mask.block(i * size, (i + 1) * size, 0, k_end)
    part = bias.replace(logits_BNTS=cut(bias.logits_BNTS, 2, 3),
                        rel_index_BTS=cut(bias.rel_index_BTS, 1, 2))
    outs.append(dot_product_attention(q_BTNH[:, q_sl], k_BSKH[:, :k_end], v_BSKH[:, :k_end],
                                      block_mask, part))
  return jnp.concatenate(outs, axis=1)


def attend(q_BTNH, k_BSKH, v_BSKH, mask, bias=None, *, impl='einsum'):
  """Attention by `impl` (config model.attention_impl, resolved): the same values from each, for
  every Mask pattern.

  einsum: dot_product_attention above, the plain XLA path. blocked: causal query blocks (CPU),
  the whole product for other patterns. jax_xla / jax_cudnn: jax.nn.dot_product_attention with
  that implementation; neither takes Shaw's relative key/value vectors (config validation
  refuses the pair).
  """
  if impl == 'einsum':
    return dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask, bias)
  if impl == 'blocked':
    return blocked_causal_attention(q_BTNH, k_BSKH, v_BSKH, mask, bias)
  if impl not in ('jax_xla', 'jax_cudnn'):
    raise ValueError(f'unknown attention impl {impl!r}')
  bias = bias or AttentionBias()
  if bias.rel_key_DH is not None or bias.rel_value_DH is not None:
    raise ValueError(f'attention impl {impl} cannot add relative key/value vectors (shaw)')
  logits_bias = bias.logits_BNTS
  if logits_bias is not None:
    logits_bias = logits_bias.astype(q_BTNH.dtype if impl == 'jax_cudnn' else jnp.float32)
  # A plain causal Mask goes as is_causal (cuDNN then skips the blocks above the diagonal) plus
  # its segment part as the array; any other mask is passed whole.
  is_causal = isinstance(mask, Mask) and mask.plain_causal
  if is_causal:
    mask = mask.segments_only()
  return jax.nn.dot_product_attention(
      q_BTNH, k_BSKH, v_BSKH, bias=logits_bias, mask=mask_array(mask), is_causal=is_causal,
      implementation='cudnn' if impl == 'jax_cudnn' else 'xla')


class Attention(nn.Module):
  """Attention of a block's queries over keys and values of the same sequence (self-attention)
  or of another one (cross-attention); cfg is a transformer.ModelConfig.

  transform_qk(q, k, q_positions, k_positions) -> (q, k) is the positional scheme's hook on
  queries and keys (None in cross-attention: no scheme relates positions of two sequences).

  Cached decoding (research/model/decode.py) passes `cache`, this layer's {'k', 'v'}
  ([B, K, S, H] each), and gets (out, new cache) back. Self-attention (cache_index given): the
  new tokens' keys, each rotated by its own position, and values are written into slots
  [cache_index, cache_index + T), and the queries attend over every slot under a mask over them.
  Cross-attention: kv_BSD given (the first call), its keys and values are computed and become
  the cache; kv_BSD None (every later step), the cached ones are used as they are.
  """
  cfg: object
  out_init_std: float
  dtype: jnp.dtype
  transform_qk: Optional[Callable] = None

  @nn.compact
  def __call__(self, x_BTD, kv_BSD, mask, q_positions_BT, k_positions_BS, bias, deterministic,
               cache=None, cache_index=None):
    cfg = self.cfg
    d = x_BTD.shape[-1]

    def heads_in(name, x, heads):
      return layers.Projection((d,), (heads, cfg.head_dim), ('embed', 'heads', 'kv'),
                               cfg.use_bias, cfg.init_std, self.dtype, name=name)(x)

    heads_axes = ('batch', 'length', 'heads', 'kv')
    q = nn.with_logical_constraint(heads_in('query', x_BTD, cfg.num_heads), heads_axes)
    if kv_BSD is None:  # a cross-attention step: the memory's keys and values as first computed
      k, v = cache['k'], cache['v']
    else:
      k = nn.with_logical_constraint(heads_in('key', kv_BSD, cfg.num_kv_heads), heads_axes)
      v = nn.with_logical_constraint(heads_in('value', kv_BSD, cfg.num_kv_heads), heads_axes)
      if self.transform_qk is not None:
        q, k = self.transform_qk(q, k, q_positions_BT, k_positions_BS)
      if cache is not None:
        # Heads-major, [B, K, S, H]: the key product reads the cache as it is, where from
        # [B, S, K, H] XLA:CPU transposed the whole key cache at every step.
        k, v = (a.transpose(0, 2, 1, 3).astype(cache['k'].dtype) for a in (k, v))
    if cache is None:
      impl = resolve_impl(cfg.attention_impl, dtype=self.dtype,
                          has_relative_kv=bias is not None and bias.rel_key_DH is not None)
      out_BTNH = attend(q, k, v, mask, bias, impl=impl)
    else:
      if cache_index is not None:  # self-attention: the new tokens into their slots
        k, v = (jax.lax.dynamic_update_slice(cache[name], new, (0, 0, cache_index, 0))
                for name, new in (('k', k), ('v', v)))
      # A few queries over the cache's slots under an explicit mask: the plain product (the
      # blocked path would compute it whole anyway, and the fused kernels gain on long query
      # blocks, not on one row).
      out_BTNH = dot_product_attention(q, k, v, mask, bias, heads_major=True)
    out_BTNH = nn.with_logical_constraint(out_BTNH, heads_axes)
    out_BTD = layers.Projection((cfg.num_heads, cfg.head_dim), (d,), ('heads', 'kv', 'embed'),
                                cfg.use_bias, self.out_init_std, self.dtype, name='out')(out_BTNH)
    out_BTD = nn.Dropout(cfg.dropout)(out_BTD, deterministic=deterministic)
    if cache is None:
      return out_BTD
    return out_BTD, {'k': k, 'v': v}
