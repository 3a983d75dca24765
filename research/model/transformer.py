"""The decoder-only transformer; one Batch in, logits out.

Switches (all from `model.*`): norm kind and position, activation, positional scheme, grouped-query
heads, tied embeddings, biases, dropout. Later architectures (prefix LM, encoder-decoder, encoder)
reuse `Block` with a different mask.
"""

import dataclasses
import functools
import math

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


class Block(nn.Module):
  """Pre- or post-norm attention + MLP. Returns (x, None) so that nn.scan can stack it."""
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BTD, mask, positions_BT, bias):
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
    x_BTD = nn.with_logical_constraint(x_BTD, RESIDUAL_AXES)
    if cfg.norm_position == 'pre':
      x_BTD = x_BTD + attn(norm1(x_BTD), mask, positions_BT, bias, deterministic)
      x_BTD = x_BTD + mlp(norm2(x_BTD), deterministic)
    else:
      x_BTD = norm1(x_BTD + attn(x_BTD, mask, positions_BT, bias, deterministic))
      x_BTD = norm2(x_BTD + mlp(x_BTD, deterministic))
    return nn.with_logical_constraint(x_BTD, RESIDUAL_AXES), None


def block_stack(cfg: ModelConfig, deterministic: bool):
  """A function (x, mask, positions, bias) -> x over all layers.

  scan_layers: one Block under nn.scan, its parameters stacked on a leading 'layers' axis
  (params['layers'][...]); compiles once whatever the depth. Otherwise a Python loop of
  layer_0, layer_1, ... Either way each layer may be rematerialized by the `remat` policy.
  """
  block = Block
  if cfg.remat != 'none':
    block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: 'layers'})(
                        cfg, deterministic, name='layers')
    return lambda x, *args: stack(x, *args)[0]

  layers_ = [block(cfg, deterministic, name=f'layer_{i}') for i in range(cfg.num_layers)]

  def run(x, *args):
    for layer in layers_:
      x = layer(x, *args)[0]
    return x
  return run


class Decoder(nn.Module):
  """Causal decoder. Batch keys used: inputs, positions, segment_ids."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, inputs_BT, positions_BT, segment_ids_BT, *, deterministic=True):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, name='embed',
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.init_std), ('vocab', 'embed')))
    positional = positional_lib.Positional(cfg, name='positional')
    x_BTD = positional.embed(embed(inputs_BT), positions_BT)
    x_BTD = nn.Dropout(cfg.dropout)(x_BTD, deterministic=deterministic)
    mask = attention_lib.Mask(segment_ids_BT, segment_ids_BT, causal=True)
    bias = positional.attention_bias(positions_BT)
    x_BTD = block_stack(cfg, deterministic)(x_BTD, mask, positions_BT, bias)
    if cfg.norm_position == 'pre':
      x_BTD = layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_final')(x_BTD)
    if cfg.tie_embeddings:
      logits_BTV = embed.attend(x_BTD)
    else:
      logits_BTV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, name='unembed',
                            kernel_init=nn.with_logical_partitioning(
                                nn.initializers.normal(cfg.init_std), ('embed', 'vocab')))(x_BTD)
    return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ('batch', 'length', 'vocab'))
