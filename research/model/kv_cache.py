"""The key/value cache of cached decoding (research/model/decode.py), sized up front.

A row's cache has `slots` places for its main sequence's tokens. Slot j holds, in every layer, the
key (already rotated by RoPE at the token's own position) and value of the token written there,
and beside them, shared by all layers, whether the slot holds a real token, the token's position
and whether it is in a prefix LM's bidirectional prefix. Rows keep their own positions: a batch of
prompts of different lengths fills slots [0, P) with each prompt right-padded to P (the padding
slots stay invalid, so nothing attends them), and generated token i of every row goes to slot
P + i at that row's own next position. One write index serves the whole batch, so each step
writes with one dynamic_update_slice.

An encoder-decoder's cache also holds, per layer, the cross-attention keys and values of the
encoder's output (computed once, on the first call) and which encoder tokens are real.

The attention of new tokens over the cache is the training forward's, with the mask and the
positional bias built against the cache's slots: a query's causal index is its own slot
(Mask.index_q_BT), not 0 (a query that counted from 0 would see only slot 0), and relative
schemes compare the query's position with each cached key's.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from research.model import attention as attention_lib


@flax.struct.dataclass
class Cache:
  index: jax.Array  # int32 scalar: the first slot the next call writes
  valid_BS: jax.Array  # int32: 1 on slots holding a real token
  positions_BS: jax.Array  # int32: the position of each slot's token
  prefix_BS: jax.Array  # int32: 1 on the bidirectional prefix (prefix_lm)
  layers: Any  # transformer.block_stack's cache, {'k', 'v'} [B, K, S, H] per attention of a layer:
  # stacked as [L, B, K, S, H] if scanned, else a tuple of the layers' own
  memory_valid_BS: Optional[jax.Array] = None  # encoder-decoder: 1 on real encoder tokens
  scanned: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def slots(self) -> int:
    return self.valid_BS.shape[1]

  def take_rows(self, rows_B) -> 'Cache':
    """The cache of rows `rows_B` of this one (beam search's reordering)."""
    def take(axis):
      return lambda x: jnp.take(x, rows_B, axis=axis)
    meta = {name: None if getattr(self, name) is None else take(0)(getattr(self, name))
            for name in ('valid_BS', 'positions_BS', 'prefix_BS', 'memory_valid_BS')}
    return self.replace(layers=jax.tree.map(take(1 if self.scanned else 0), self.layers), **meta)

  def write(self, segment_ids_BT, positions_BT, prefix_BT) -> 'Cache':
    """The slot metadata of T new tokens written at [index, index + T)."""
    def put(a_BS, new_BT):
      return jax.lax.dynamic_update_slice(a_BS, new_BT.astype(a_BS.dtype), (0, self.index))
    return self.replace(valid_BS=put(self.valid_BS, segment_ids_BT > 0),
                        positions_BS=put(self.positions_BS, positions_BT),
                        prefix_BS=put(self.prefix_BS, prefix_BT))

  def self_mask(self, segment_ids_BT, prefix_BT, pattern: str) -> attention_lib.Mask:
    """The Mask of T new queries (already written) over every slot: causal by slot index, plus
    the bidirectional prefix for pattern 'prefix'; padding and empty slots attend nothing."""
    t = segment_ids_BT.shape[1]
    index_q_BT = jnp.broadcast_to(self.index + jnp.arange(t, dtype=jnp.int32),
                                  segment_ids_BT.shape)
    prefix = {}
    if pattern == 'prefix':
      prefix = dict(prefix_q_BT=prefix_BT, prefix_k_BS=self.prefix_BS)
    return attention_lib.Mask((segment_ids_BT > 0).astype(jnp.int32), self.valid_BS,
                              index_q_BT=index_q_BT, pattern=pattern, **prefix)

  def memory_mask(self, segment_ids_BT) -> Optional[attention_lib.Mask]:
    if self.memory_valid_BS is None:
      return None
    return attention_lib.Mask((segment_ids_BT > 0).astype(jnp.int32), self.memory_valid_BS,
                              pattern='cross')


def _layer_shapes(cfg, batch: int, slots: int, memory_length: Optional[int]) -> dict:
  # Heads-major, [B, K, S, H]: the layout a decoding step's attention reads (attention.Attention).
  kv = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
  shapes = {'self': {'k': kv, 'v': kv}}
  if memory_length is not None:
    mem = (batch, cfg.num_kv_heads, memory_length, cfg.head_dim)
    shapes['cross'] = {'k': mem, 'v': mem}
  return shapes


def init(cfg, batch: int, slots: int, memory_length: Optional[int] = None) -> Cache:
  """An empty cache for `batch` rows of `slots` tokens (cfg: a transformer.ModelConfig); with
  memory_length, room for cross-attention over that many encoder tokens (encoder_decoder)."""
  dtype = jnp.dtype(cfg.dtype)
  shapes = _layer_shapes(cfg, batch, slots, memory_length)
  is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
  if cfg.scan_layers:
    layers = jax.tree.map(lambda s: jnp.zeros((cfg.num_layers,) + s, dtype), shapes,
                          is_leaf=is_shape)
  else:
    layers = tuple(jax.tree.map(lambda s: jnp.zeros(s, dtype), shapes, is_leaf=is_shape)
                   for _ in range(cfg.num_layers))
  zeros_BS = jnp.zeros((batch, slots), jnp.int32)
  memory_valid = None if memory_length is None else jnp.zeros((batch, memory_length), jnp.int32)
  return Cache(index=jnp.int32(0), valid_BS=zeros_BS, positions_BS=zeros_BS, prefix_BS=zeros_BS,
               layers=layers, memory_valid_BS=memory_valid, scanned=cfg.scan_layers)


def bytes_per_token(cfg) -> int:
  """Bytes one cached token takes: a key and a value per layer (K heads of H dims each, in the
  compute dtype), and its three int32 slot fields. The cross-attention memory, an
  encoder-decoder's, is per encoder token and not counted here."""
  return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize + 12
