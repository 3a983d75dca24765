"""Norms and the MLP, each parameter named with its logical axes."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def gelu(x):
  # The exact GELU written with lax.erf: jax.nn.gelu(approximate=False) differentiates through
  # erfc's polynomial and made the MLP backward ~2.5x slower on CPU (../shared/notes/cpu-perf.md).
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': gelu, 'swiglu': jax.nn.silu, 'geglu': gelu}
GATED = ('swiglu', 'geglu')


def norm(kind: str, eps: float, use_bias: bool, dtype, name: str):
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if kind == 'rmsnorm':
    return nn.RMSNorm(epsilon=eps, dtype=dtype, scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_bias=use_bias, scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      name=name)


class Mlp(nn.Module):
  d_ff: int
  activation: str
  use_bias: bool
  init_std: float
  out_init_std: float
  dropout: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BTD, deterministic):
    d = x_BTD.shape[-1]

    def dense(name, features, names, std):
      return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype, name=name,
                      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), names),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))

    h_BTF = ACTIVATIONS[self.activation](dense('wi', self.d_ff, ('embed', 'mlp'), self.init_std)(x_BTD))
    if self.activation in GATED:
      h_BTF *= dense('wi_gate', self.d_ff, ('embed', 'mlp'), self.init_std)(x_BTD)
    h_BTF = nn.with_logical_constraint(h_BTF, ('batch', 'length', 'mlp'))
    h_BTF = nn.Dropout(self.dropout)(h_BTF, deterministic=deterministic)
    out_BTD = dense('wo', d, ('mlp', 'embed'), self.out_init_std)(h_BTF)
    return nn.Dropout(self.dropout)(out_BTD, deterministic=deterministic)
