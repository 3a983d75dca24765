"""The loss, the train step and the eval step: pure functions the loop jits with shardings."""

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.data import batch as batch_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def token_losses(logits_BTV, targets_BT, *, label_smoothing=0.0, z_loss=0.0):
  """(objective per token, negative log-likelihood per token), both float32 [B, T]."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  nll_BT = lse_BT - target_logit_BT
  objective_BT = nll_BT
  if label_smoothing:
    smooth_BT = lse_BT - logits_BTV.mean(axis=-1)  # cross-entropy against the uniform distribution
    objective_BT = (1 - label_smoothing) * nll_BT + label_smoothing * smooth_BT
  if z_loss:
    objective_BT = objective_BT + z_loss * jnp.square(lse_BT)
  return objective_BT, nll_BT


def forward(model, params, batch, *, deterministic=True, rngs=None):
  """Logits [B, length, vocab] of the model (research/model/archs.py) on a Batch."""
  return model.apply({'params': params}, batch, deterministic=deterministic, rngs=rngs)


def train_step(state: TrainState, batch, *, model, tx, train_cfg, seed: int):
  """One optimizer update. Dropout noise is a function of (seed, step), so resume repeats it."""
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)

  def loss_fn(params):
    logits = forward(model, params, batch, deterministic=False, rngs={'dropout': rng})
    objective_BT, nll_BT = token_losses(logits, batch['targets'],
                                        label_smoothing=train_cfg.label_smoothing,
                                        z_loss=train_cfg.z_loss)
    mask_BT = batch['loss_mask']
    denom = jnp.maximum(mask_BT.sum(), 1.0)
    return (objective_BT * mask_BT).sum() / denom, (nll_BT * mask_BT).sum() / denom

  (_, nll), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': nll, 'grad_norm': optax.global_norm(grads)}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if train_cfg.skip_nonfinite:
    finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
    new_state = keep_unless(finite, new_state, state)
    metrics['skipped'] = jnp.logical_not(finite).astype(jnp.float32)
  return new_state, metrics


def keep_unless(finite, new_state, old_state):
  """new_state if finite, else old_state's parameters and optimizer moments with new_state's
  step counts (TrainState.step and optax's `count`s): a skipped step still counts, so the
  learning-rate schedule and the dropout noise go on as in a run without the skip."""
  def pick(path, new, old):
    name = getattr(path[-1], 'name', None)
    return new if name in ('step', 'count') else jnp.where(finite, new, old)
  return jax.tree_util.tree_map_with_path(pick, new_state, old_state)


def eval_step(params, batch, token_bytes_V, *, model):
  """Sums over the batch: negative log-likelihood (nats), predicted tokens, their UTF-8 bytes."""
  logits = forward(model, params, batch)
  _, nll_BT = token_losses(logits, batch['targets'])
  mask_BT = batch['loss_mask']
  return {'nll_sum': (nll_BT * mask_BT).sum(), 'tokens': mask_BT.sum(),
          'bytes': (jnp.take(token_bytes_V, batch['targets']) * mask_BT).sum()}


def eval_metrics(sums) -> dict:
  loss = float(sums['nll_sum']) / max(float(sums['tokens']), 1.0)
  return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
          'bits_per_byte': float(sums['nll_sum']) / max(float(sums['bytes']), 1.0) / math.log(2)}


def init_params(model, rng, lengths: dict):
  """Boxed (logically annotated) parameters of the model, from a one-row dummy Batch."""
  dummy = jax.tree.map(jnp.asarray, batch_lib.dummy(model.BATCH_KEYS, 1, lengths))
  return model.init({'params': rng}, dummy)['params']


def init_state(model, tx, rng, lengths: dict):
  """Boxed (logically annotated) initial state; unbox with nn.meta.unbox after sharding."""
  params = init_params(model, rng, lengths)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_specs(model, tx, lengths: dict):
  """Logical PartitionSpecs for every leaf of the (unboxed) train state."""
  abstract = jax.eval_shape(lambda r: init_state(model, tx, r, lengths), jax.random.PRNGKey(0))
  return nn.get_partition_spec(abstract)
