"""The transformer blocks every architecture is built from (research/model/archs.py).

Switches (all from `model.*`): norm kind and position, activation, positional scheme, grouped-query
heads, tied embeddings, biases, dropout. A block is self-attention (under whatever Mask its stack
passes), optionally cross-attention over another sequence, and the MLP.
"""

import dataclasses
import functools
import math
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from research.model import attention as attention_lib
from research.model import layers
from research.model import positional as positional_lib


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int
  norm: str
  norm_position: str
  norm_eps: float
  activation: str
  positional: str
  max_len: int
  rope_theta: float
  rope_layout: str
  rope_fraction: float
  t5_num_buckets: int
  t5_max_distance: int
  shaw_max_distance: int
  tie_embeddings: bool
  use_bias: bool
  dropout: float
  init_std: float
  arch: str = 'decoder'
  num_encoder_layers: int = 0  # encoder_decoder: the encoder's depth (resolved: never 0)
  share_embeddings: bool = True  # encoder_decoder: one token embedding for both stacks
  share_layers: bool = False  # encoder_decoder: the encoder runs the decoder's blocks
  attention_impl: str = 'einsum'
  scan_layers: bool = False
  remat: str = 'none'
  dtype: str = 'float32'

  @classmethod
  def from_config(cls, config):
    """From a resolved config (research.config.resolve)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {'dtype'}
    return cls(**{k: config.model[k] for k in fields}, dtype=config.train.compute_dtype)


# model.remat -> what the backward may keep from the forward of each layer (the rest is recomputed).
REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# Activations [batch, length, d_model]: rows split like the batch, features whole on every device
# (parameters' 'embed' axis may be split over fsdp, activations' never).
RESIDUAL_AXES = ('batch', 'length', None)


@flax.struct.dataclass
class Context:
  """What every layer of a stack reads beside its input, computed once per forward.

  mask, positions, bias: the stack's self-attention (its queries and keys share the positions).
  memory_BSD, memory_mask: cross-attention over another sequence (an encoder's output), if any.
  """
  mask: attention_lib.Mask
  positions_BT: jax.Array
  bias: Optional[attention_lib.AttentionBias] = None
  memory_BSD: Optional[jax.Array] = None
  memory_mask: Optional[attention_lib.Mask] = None
  # Cached decoding (research/model/decode.py): the first cache slot the new tokens fill; the
  # mask and bias are then over the cache's slots, and positions_BT the new tokens'.
  cache_index: Optional[jax.Array] = None


class Block(nn.Module):
  """Pre- or post-norm self-attention, optional cross-attention, MLP. Returns (x, cache) so that
  nn.scan can stack it: cache None, or under cached decoding (research/model/decode.py) this
  layer's updated {'self': {'k', 'v'}, 'cross': {'k', 'v'}} from the one it was given."""
  cfg: ModelConfig
  deterministic: bool = True
  cross: bool = False

  @nn.compact
  def __call__(self, x_BTD, ctx: Context, cache=None):
    cfg, deterministic = self.cfg, self.deterministic
    dtype = jnp.dtype(cfg.dtype)
    # GPT-2's scaled init of the projections that write into the residual stream.
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    attn = attention_lib.Attention(cfg, out_std, dtype,
                                   functools.partial(positional_lib.transform_qk, cfg),
                                   name='attention')
    mlp = layers.Mlp(cfg.d_ff, cfg.activation, cfg.use_bias, cfg.init_std, out_std, cfg.dropout,
                     dtype, name='mlp')
    norm1 = layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_attention')
    norm2 = layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_mlp')
    cache = cache or {}
    new_cache = {}

    def cached(name, out):  # an attention's output, its updated cache kept aside
      if name not in cache:
        return out
      new_cache[name] = out[1]
      return out[0]

    sublayers = [lambda h: cached('self', attn(
        h, h, ctx.mask, ctx.positions_BT, ctx.positions_BT, ctx.bias, deterministic,
        cache.get('self'), ctx.cache_index))]
    norms = [norm1]
    # A stack shared with an encoder (model.share_layers) runs without memory there; a cached
    # decoding step has the memory's keys and values in its cache instead.
    if self.cross and (ctx.memory_BSD is not None or 'cross' in cache):
      cross = attention_lib.Attention(cfg, out_std, dtype, None, name='cross_attention')
      sublayers.append(lambda h: cached('cross', cross(
          h, ctx.memory_BSD, ctx.memory_mask, None, None, None, deterministic,
          cache.get('cross'))))
      norms.append(layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_cross'))
    sublayers.append(lambda h: mlp(h, deterministic))
    norms.append(norm2)
    x_BTD = nn.with_logical_constraint(x_BTD, RESIDUAL_AXES)
    for sublayer, norm in zip(sublayers, norms):
      if cfg.norm_position == 'pre':
        x_BTD = x_BTD + sublayer(norm(x_BTD))
      else:
        x_BTD = norm(x_BTD + sublayer(x_BTD))
    return nn.with_logical_constraint(x_BTD, RESIDUAL_AXES), new_cache or None


def block_stack(cfg: ModelConfig, deterministic: bool, *, num_layers: int, cross: bool = False,
                prefix: str = ''):
  """A function (x, ctx) -> x over num_layers blocks, their parameters named with `prefix`;
  called as (x, ctx, cache) under cached decoding, it returns (x, the updated cache).

  scan_layers: one Block under nn.scan, its parameters stacked on a leading 'layers' axis
  (params[prefix + 'layers'][...]), and so is the cache ([layers, B, S, K, H]); compiles once
  whatever the depth. Otherwise a Python loop of prefix + 'layer_0', 'layer_1', ..., the cache a
  tuple of the layers' own. Either way each layer may be rematerialized by `remat`.
  """
  # The stack's own depth scales its residual projections' initialization (Block's out_std).
  cfg = dataclasses.replace(cfg, num_layers=num_layers)
  block = Block
  if cfg.remat != 'none':
    block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                    in_axes=(nn.broadcast, 0), length=num_layers,
                    metadata_params={nn.PARTITION_NAME: 'layers'})(
                        cfg, deterministic, cross, name=f'{prefix}layers')

    def run_scanned(x, ctx, cache=None):
      x, cache = stack(x, ctx, cache)
      return x if cache is None else (x, cache)
    return run_scanned

  layers_ = [block(cfg, deterministic, cross, name=f'{prefix}layer_{i}')
             for i in range(num_layers)]

  def run(x, ctx, cache=None):
    new_cache = []
    for i, layer in enumerate(layers_):
      x, layer_cache = layer(x, ctx, None if cache is None else cache[i])
      new_cache.append(layer_cache)
    return x if cache is None else (x, tuple(new_cache))
  return run
