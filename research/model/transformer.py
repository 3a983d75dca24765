"""The decoder-only transformer; one Batch in, logits out.

Switches (all from `model.*`): norm kind and position, activation, positional scheme, grouped-query
heads, tied embeddings, biases, dropout. Later architectures (prefix LM, encoder-decoder, encoder)
reuse `Block` with a different mask.
"""

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from research.model import attention as attention_lib
from research.model import layers
from research.model.positional import Positional


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
  dtype: str = 'float32'

  @classmethod
  def from_config(cls, config):
    """From a resolved config (research.config.resolve)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {'dtype'}
    return cls(**{k: config.model[k] for k in fields}, dtype=config.train.compute_dtype)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, mask_B1TS, positions_BT, positional, bias, deterministic):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    # GPT-2's scaled init of the projections that write into the residual stream.
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    attn = attention_lib.Attention(
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.use_bias, cfg.init_std, out_std,
        cfg.dropout, dtype, name='attention')
    mlp = layers.Mlp(cfg.d_ff, cfg.activation, cfg.use_bias, cfg.init_std, out_std, cfg.dropout,
                     dtype, name='mlp')
    norm1 = layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_attention')
    norm2 = layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_mlp')
    if cfg.norm_position == 'pre':
      x_BTD = x_BTD + attn(norm1(x_BTD), mask_B1TS, positions_BT, positional, bias, deterministic)
      return x_BTD + mlp(norm2(x_BTD), deterministic)
    x_BTD = norm1(x_BTD + attn(x_BTD, mask_B1TS, positions_BT, positional, bias, deterministic))
    return norm2(x_BTD + mlp(x_BTD, deterministic))


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
    positional = Positional(cfg, name='positional')
    x_BTD = positional.embed(embed(inputs_BT), positions_BT)
    x_BTD = nn.Dropout(cfg.dropout)(x_BTD, deterministic=deterministic)
    mask_B1TT = attention_lib.attention_mask(segment_ids_BT, causal=True)
    bias = positional.attention_bias(positions_BT)
    for i in range(cfg.num_layers):
      x_BTD = Block(cfg, name=f'layer_{i}')(x_BTD, mask_B1TT, positions_BT, positional, bias,
                                             deterministic)
    if cfg.norm_position == 'pre':
      x_BTD = layers.norm(cfg.norm, cfg.norm_eps, cfg.use_bias, dtype, 'norm_final')(x_BTD)
    if cfg.tie_embeddings:
      return embed.attend(x_BTD).astype(jnp.float32)
    return nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, name='unembed',
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(cfg.init_std), ('embed', 'vocab')))(
                            x_BTD).astype(jnp.float32)
