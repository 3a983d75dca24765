"""Positional schemes behind `model.positional`, through three hooks the blocks never look inside.

1. `embed`: added to the token embeddings (learned, sinusoidal).
2. `transform_qk`: applied to queries and keys in every layer (RoPE arrives here).
3. `attention_bias`: added to the attention logits, computed once per forward and shared by all
   layers (T5 bias, ALiBi arrive here).
`none` (NoPE) uses none of them: causal masking alone carries order.
"""

import math

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_table(max_len: int, d: int):
  """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al. 2017)."""
  pos_L1 = jnp.arange(max_len, dtype=jnp.float32)[:, None]
  freq_F = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  angle_LF = pos_L1 * freq_F
  # Interleave so even dimensions carry sin and odd ones cos, exactly as in the paper.
  return jnp.stack([jnp.sin(angle_LF), jnp.cos(angle_LF)], axis=-1).reshape(max_len, d)


class Positional(nn.Module):
  scheme: str
  max_len: int
  d_model: int
  init_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def embed(self, x_BTD, positions_BT):
    if self.scheme == 'learned':
      table = self.param('embedding', nn.with_logical_partitioning(
          nn.initializers.normal(self.init_std), (None, 'embed')), (self.max_len, self.d_model))
      return x_BTD + jnp.take(table, positions_BT, axis=0).astype(self.dtype)
    if self.scheme == 'sinusoidal':
      # The paper scales token embeddings by sqrt(d): at std-0.02 initialisation the unit-amplitude
      # table would otherwise swamp them.
      pe_BTD = jnp.take(sinusoidal_table(self.max_len, self.d_model), positions_BT, axis=0)
      return x_BTD * math.sqrt(self.d_model) + pe_BTD.astype(self.dtype)
    return x_BTD

  def transform_qk(self, q_BTNH, k_BTKH, positions_BT):
    del positions_BT
    return q_BTNH, k_BTKH

  def attention_bias(self, positions_BT):
    """Additive logits bias broadcastable to [B, heads, T, T], or None."""
    del positions_BT
    return None
