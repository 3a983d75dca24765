"""Sampling by re-running the full forward each step: simple and right for every architecture
and scheme.

The prompt is an example's inputs and the generated tokens its targets; the architecture's own
feature converter (research/data/features.py) lays them out, so a decoder continues the prompt,
a prefix LM reads it bidirectionally, and an encoder-decoder encodes it and decodes from its
start token, all through one loop: read the logits at the position that predicts target i,
sample, write the token where the model reads target i (the next position).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'vocab_size'))
def _sample(model, params, batch, offsets_N, rng, temperature, *, max_new, vocab_size):
  n, length = batch['inputs'].shape
  rows_N = jnp.arange(n)

  def body(i, carry):
    inputs_NL, out_NM, rng = carry
    logits_NLV = model.apply({'params': params}, dict(batch, inputs=inputs_NL))
    logits_NV = logits_NLV[rows_N, offsets_N + i]
    # Rows past the tokenizer's text vocabulary are special tokens or padding: never sampled.
    logits_NV = jnp.where(jnp.arange(logits_NV.shape[-1]) < vocab_size, logits_NV, -jnp.inf)
    rng, key = jax.random.split(rng)
    next_N = jnp.where(temperature > 0,
                       jax.random.categorical(key, logits_NV / jnp.maximum(temperature, 1e-6)),
                       jnp.argmax(logits_NV, axis=-1)).astype(inputs_NL.dtype)
    inputs_NL = inputs_NL.at[rows_N, offsets_N + i + 1].set(next_N, mode='drop')
    return inputs_NL, out_NM.at[:, i].set(next_N), rng

  out_NM = jnp.zeros((n, max_new), batch['inputs'].dtype)
  _, out_NM, _ = jax.lax.fori_loop(0, max_new, body, (batch['inputs'], out_NM, rng))
  return out_NM


def generation_batch(converter, model_lengths: dict, prompt_ids, num_samples: int,
                     max_new_tokens: int):
  """(Batch, [N] offsets of the first target, tokens that fit) of num_samples copies of the
  prompt with room for the targets, at the model's own sequence lengths."""
  lengths = converter.generation_lengths(model_lengths, len(prompt_ids))
  prompt = np.asarray(prompt_ids, np.int32)[None].repeat(num_samples, 0)
  targets = np.zeros((num_samples, lengths.targets), np.int32)
  example = {'inputs': prompt, 'inputs_segment_ids': np.ones_like(prompt),
             'targets': targets, 'targets_segment_ids': np.ones_like(targets)}
  batch = converter(example, lengths)
  offsets = converter.target_offsets(example)
  room = model_lengths['length'] - int(offsets.max())
  return batch, offsets, min(max_new_tokens, room, lengths.targets)


def generate(model, params, prompt_ids, *, converter, model_lengths: dict, num_samples: int,
             max_new_tokens: int, temperature: float, seed: int, eot_id: int, vocab_size: int):
  """num_samples continuations of prompt_ids (list of ints), each cut at the first end-of-text,
  drawn from the first vocab_size ids (the tokenizer's text; the model may have more rows).
  The prompt keeps its last tokens when the model's sequence cannot hold it all."""
  prompt = list(prompt_ids) or [eot_id]
  prompt = prompt[-converter.max_prompt_length(model_lengths):]
  batch, offsets, max_new = generation_batch(converter, model_lengths, prompt, num_samples,
                                             max_new_tokens)
  out = np.asarray(_sample(model, params, jax.tree.map(jnp.asarray, batch),
                           jnp.asarray(offsets, jnp.int32), jax.random.PRNGKey(seed),
                           jnp.float32(temperature), max_new=max_new, vocab_size=vocab_size))
  samples = []
  for row in out.tolist():
    samples.append(row[:row.index(eot_id)] if eot_id in row else row)
  return samples

