"""Lost in the middle (Liu et al. 2023): a key-value retrieval run's accuracy by the gold pair's
depth (research/data/kv_retrieval.py), written to <workdir>/kv_depths.json."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from research.data import kv_retrieval as kv
from research.data import pipeline
from research.errors import ConfigError
from research.train.checkpoint import restore_run

RESULT = 'kv_depths.json'
OPTIONS = ('rows',)  # launch.evaluate's flags for evaluate_run


def _exact_match(logits_BTV, targets_BT, loss_mask_BT):
  """(B,) bool: the argmax equals the target at every scored position. Under teacher forcing this
  is greedy decoding's exact match: decoding goes wrong only after a first wrong argmax."""
  wrong_BT = (jnp.argmax(logits_BTV, axis=-1) != targets_BT) & (loss_mask_BT > 0)
  return ~wrong_BT.any(axis=-1)


@functools.partial(jax.jit, static_argnames=('model',))
def _batch_exact_match(model, params, batch):
  logits_BTV = model.apply({'params': params}, batch)
  return _exact_match(logits_BTV, batch['targets'], batch['loss_mask'])


def depth_accuracy(model, params, *, seed: int, seq_len: int, num_pairs: int, key_len: int,
                   value_len: int, rows: int, batch_size: int, converter=None) -> dict:
  """Exact-match accuracy of retrieving the gold value at each of depths(num_pairs), over `rows`
  held-out rows per depth. The rows do not depend on batch_size, and every depth queries the
  same pair lists, so depths differ only in which pair is asked for. converter: the model's
  feature converter (default: a decoder's)."""
  if rows < 1 or batch_size < 1:
    raise ConfigError(f'rows={rows}, batch_size={batch_size}: both must be positive')
  shape = dict(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len)
  converter = converter or kv.features.DecoderOnly()
  lengths = kv.example_lengths(**shape)
  result = {'depths': kv.depths(num_pairs), 'accuracy': [], 'rows': rows, 'num_pairs': num_pairs}
  for gold in result['depths']:
    batch = converter(kv.kv_example(seed, 0, batch_size=rows, gold=gold, split='eval', **shape),
                      lengths)
    correct = 0
    for i in range(0, rows, batch_size):
      chunk = {k: v[i:i + batch_size] for k, v in batch.items()}
      n = len(chunk['inputs'])
      if n < batch_size:  # pad the last chunk so every call has one shape: one compilation
        chunk = {k: np.concatenate([v, np.repeat(v[:1], batch_size - n, axis=0)])
                 for k, v in chunk.items()}
      correct += int(np.asarray(_batch_exact_match(model, params, chunk))[:n].sum())
    result['accuracy'].append(correct / rows)
  return result


def evaluate_run(workdir: str, *, rows: int = 256) -> dict:
  """Depth accuracy of the kv retrieval run in workdir at its latest checkpoint; writes
  <workdir>/kv_depths.json and returns its content."""
  resolved, tr, params, step = restore_run(workdir)
  d = resolved.data
  if pipeline.task_class(resolved) is not kv.KvTask:
    raise ConfigError(f'--workdir={workdir}: a run on data.source={d.source}, '
                      'not a kv_retrieval run')
  shape = dict(num_pairs=d.kv_pairs, key_len=d.kv_key_len, value_len=d.kv_value_len)
  result = depth_accuracy(tr.model, params, seed=resolved.seed, seq_len=d.seq_len,
                          rows=rows, batch_size=resolved.train.batch_size,
                          converter=pipeline.converter(resolved, bos_id=kv.EOT), **shape)
  result = {'step': step, 'seq_len': d.seq_len, **shape, **result}
  tmp = os.path.join(workdir, 'kv_depths.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'kv_depths.json'))
  return result


def format_result(out: dict) -> str:
  return ' '.join(f'pair {d + 1}: {a:.3f}' for d, a in zip(out['depths'], out['accuracy']))
