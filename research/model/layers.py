"""Norms and the MLP, each parameter named with its logical axes."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def gelu(x):
  # The exact GELU written with lax.erf: jax.nn.gelu(approximate=False) differentiates through
  # erfc's polynomial, which makes the MLP backward much slower on the CPU (docs/performance.md).
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': gelu, 'swiglu': jax.nn.silu, 'geglu': gelu}
GATED = ('swiglu', 'geglu')


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x, scale, bias, eps: float, center: bool):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, statistics in float32.

  center=False is RMSNorm (no mean; bias may be None). Its backward is written out by hand,
  saving the normalized x and 1/sigma, where autodiff of the same expression reduces each row
  several more times (a faster step than flax's LayerNorm on the CPU: docs/performance.md), with
  the same values and gradients (tested).
  """
  return _normalize_fwd(x, scale, bias, eps, center)[0]


def _normalize_fwd(x, scale, bias, eps, center):
  x32 = x.astype(jnp.float32)
  if center:
    x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  xhat = x32 * rstd
  y = xhat * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(x.dtype), (xhat, rstd, scale, bias)


def _normalize_bwd(eps, center, res, dy):
  del eps
  xhat, rstd, scale, bias = res
  dy32 = dy.astype(jnp.float32)
  rows = tuple(range(dy.ndim - 1))
  dscale = jnp.sum(dy32 * xhat, axis=rows).astype(scale.dtype)
  dbias = None if bias is None else jnp.sum(dy32, axis=rows).astype(bias.dtype)
  g = dy32 * scale.astype(jnp.float32)
  dx = g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
  if center:
    dx = dx - jnp.mean(g, axis=-1, keepdims=True)
  return (dx * rstd).astype(dy.dtype), dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class Norm(nn.Module):
  """LayerNorm (center=True) or RMSNorm, parameters 'scale' (and 'bias') as flax's own."""
  eps: float
  center: bool
  use_bias: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), jnp.float32)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                        (d,), jnp.float32)
    return normalize(x.astype(self.dtype), scale, bias, self.eps, self.center)


def norm(kind: str, eps: float, use_bias: bool, dtype, name: str):
  if kind == 'rmsnorm':
    return Norm(eps, center=False, use_bias=False, dtype=dtype, name=name)
  return Norm(eps, center=True, use_bias=use_bias, dtype=dtype, name=name)


class Projection(nn.Module):
  """x [..., *in] @ kernel [*in, *out] (+ bias [*out]), the kernel stored and annotated whole.

  Unlike nn.DenseGeneral, which initializes a flattened 2-D kernel, every shape flax sees carries
  the kernel's logical axes, so its sharding constraints apply under a mesh. Same parameter
  shapes and the same initial values as DenseGeneral (and as nn.Dense for one in and out axis).
  """
  in_shape: tuple
  out_shape: tuple
  axes: tuple  # logical names of the kernel's in + out dims
  use_bias: bool
  std: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.with_logical_partitioning(
        nn.initializers.normal(self.std), self.axes), self.in_shape + self.out_shape, jnp.float32)
    n_in = len(self.in_shape)
    dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (dims, ((), ())))
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(
          nn.initializers.zeros, self.axes[n_in:]), self.out_shape, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


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
    # On the tokens as rows of one matrix [B*T, D]: XLA:CPU then lays out the backward's weight
    # gradients as plain matrix products; in [B, T, D] it transposed the hidden gradient and ran
    # them far below the matmul rate (docs/performance.md).
    d = x_BTD.shape[-1]
    x_MD = x_BTD.reshape(-1, d)

    def dense(name, n_in, n_out, axes, std):
      return Projection((n_in,), (n_out,), axes, self.use_bias, std, self.dtype, name=name)

    h_MF = ACTIVATIONS[self.activation](
        dense('wi', d, self.d_ff, ('embed', 'mlp'), self.init_std)(x_MD))
    if self.activation in GATED:
      h_MF *= dense('wi_gate', d, self.d_ff, ('embed', 'mlp'), self.init_std)(x_MD)
    h_MF = nn.with_logical_constraint(h_MF, ('batch', 'mlp'))
    h_MF = nn.Dropout(self.dropout)(h_MF, deterministic=deterministic)
    out_MD = dense('wo', self.d_ff, d, ('mlp', 'embed'), self.out_init_std)(h_MF)
    return nn.Dropout(self.dropout)(out_MD.reshape(x_BTD.shape), deterministic=deterministic)
