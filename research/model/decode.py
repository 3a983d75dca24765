"""Sampling by re-running the full forward each step: simple and right for every scheme.

A KV-cache decoder replaces this later; this one exists so a run ends by showing what it learned.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=('model', 'length', 'max_new', 'vocab_size'))
def _sample(model, params, tokens_NL, start, rng, temperature, *, length, max_new, vocab_size):
  n = tokens_NL.shape[0]
  positions_NL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (n, length))
  segments_NL = jnp.ones((n, length), jnp.int32)

  def body(i, carry):
    tokens_NL, rng = carry
    t = start + i  # the position being filled
    logits_NLV = model.apply({'params': params}, tokens_NL, positions_NL, segments_NL)
    logits_NV = jax.lax.dynamic_index_in_dim(logits_NLV, t - 1, axis=1, keepdims=False)
    # Rows past the tokenizer's vocabulary are padding (model.vocab_size): never sampled.
    logits_NV = jnp.where(jnp.arange(logits_NV.shape[-1]) < vocab_size, logits_NV, -jnp.inf)
    rng, key = jax.random.split(rng)
    next_N = jnp.where(temperature > 0,
                       jax.random.categorical(key, logits_NV / jnp.maximum(temperature, 1e-6)),
                       jnp.argmax(logits_NV, axis=-1)).astype(tokens_NL.dtype)
    return tokens_NL.at[:, t].set(next_N), rng

  tokens_NL, _ = jax.lax.fori_loop(0, max_new, body, (tokens_NL, rng))
  return tokens_NL


def generate(model, params, prompt_ids, *, num_samples, max_new_tokens, temperature, seed,
             seq_len, eot_id, vocab_size):
  """num_samples continuations of prompt_ids (list of ints), each cut at the first end-of-text,
  drawn from the first vocab_size ids (the tokenizer's; the model may have padding rows)."""
  prompt = list(prompt_ids)[-(seq_len - 1):] or [eot_id]
  max_new = min(max_new_tokens, seq_len - len(prompt))
  tokens_NL = np.zeros((num_samples, seq_len), np.int32)
  tokens_NL[:, :len(prompt)] = prompt
  out = np.asarray(_sample(model, params, jnp.asarray(tokens_NL), len(prompt),
                           jax.random.PRNGKey(seed), jnp.float32(temperature),
                           length=seq_len, max_new=max_new, vocab_size=vocab_size))
  samples = []
  for row in out[:, len(prompt):len(prompt) + max_new].tolist():
    samples.append(row[:row.index(eot_id)] if eot_id in row else row)
  return samples
