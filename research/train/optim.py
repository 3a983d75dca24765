"""AdamW with warmup + decay schedules, clipping, and weight decay only on matrices."""

import jax
import jax.numpy as jnp
import optax


def wsd_decay(peak: float, floor: float, stable_steps: int, cooldown_steps: int, shape: str):
  """Warmup-stable-decay after the warmup (Hagele et al. 2024): `peak` for stable_steps, then
  down to `floor` over cooldown_steps, linearly or as 1 - sqrt(progress) (their best shape)."""
  def decay(s):
    progress = jnp.clip((s - stable_steps) / max(cooldown_steps, 1), 0.0, 1.0)
    fall = jnp.sqrt(progress) if shape == 'sqrt' else progress
    return peak - (peak - floor) * fall
  return decay


def schedule(t) -> optax.Schedule:
  """Linear warmup to train.learning_rate, then cosine / linear / rsqrt / constant / wsd."""
  peak, warm, total = t.learning_rate, t.warmup_steps, t.steps
  floor = peak * t.min_lr_ratio
  decay_steps = max(total - warm, 1)
  if t.schedule == 'wsd':
    # The cooldown is the last cooldown_fraction of all steps: a branch of a constant-rate run
    # at step (1 - f) * steps that cools down to `steps` equals a wsd run of `steps`.
    cooldown = round(t.cooldown_fraction * total)
    decay = wsd_decay(peak, floor, max(total - cooldown - warm, 0), cooldown, t.cooldown_shape)
  elif t.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=t.min_lr_ratio)
  elif t.schedule == 'linear':
    decay = optax.linear_schedule(peak, floor, decay_steps)
  elif t.schedule == 'rsqrt':
    # Inverse square root from the end of warmup (T5), never below the floor.
    w = max(warm, 1)
    decay = lambda s: jnp.maximum(floor, peak * jnp.sqrt(w / (s + w)))  # noqa: E731
  else:
    decay = optax.constant_schedule(peak)
  if not warm:
    return decay
  return optax.join_schedules([optax.linear_schedule(peak / warm, peak, warm), decay], [warm])


def decay_mask(params, *, decay_embeddings: bool):
  """True for weight matrices: 'kernel' leaves, and embedding tables when asked."""
  def want(path, _):
    name = getattr(path[-1], 'key', str(path[-1]))
    return name == 'kernel' or (decay_embeddings and name == 'embedding')
  return jax.tree_util.tree_map_with_path(want, params)


def optimizer(t) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip else []
  parts.append(optax.adamw(schedule(t), b1=t.beta1, b2=t.beta2, eps=t.eps,
                           weight_decay=t.weight_decay,
                           mask=lambda p: decay_mask(p, decay_embeddings=t.decay_embeddings)))
  return optax.chain(*parts)
