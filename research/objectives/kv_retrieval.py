"""Synthetic key-value retrieval: the "lost in the middle" probe (Liu et al. 2023).

A row lists `num_pairs` random key-value pairs, then queries one key; the model must produce that
key's value. Accuracy as a function of where the queried (gold) pair sits in the list shows
whether a model uses the middle of its context as well as its ends.

  [EOT] k1 : v1 ; k2 : v2 ; ... ; kN : vN ; QUERY kq : vq

Ids 0..NUM_SYMBOLS-1 are content symbols; the rest are the special tokens below. Only the
query's value tokens are scored, so the loss is the retrieval loss alone: keys and values are
random, and predicting them would only add irreducible noise to the metric.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.evaluate import restore_run

NUM_SYMBOLS = 64
EOT = 64  # also the beginning of every row, and the padding id
KV_SEP = 65  # ':'
PAIR_SEP = 66  # ';'
QUERY = 67
VOCAB_SIZE = 68

_SPLITS = {'train': 0, 'eval': 1}  # disjoint rng streams
# One printable character per symbol, so a key or value reads as one word.
_ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ@#'
_SPECIAL_TEXT = {EOT: '', KV_SEP: ' : ', PAIR_SEP: ' ; ', QUERY: ' ? '}


class SyntheticTokenizer:
  """The Tokenizer protocol over the synthetic vocabulary; there is no text to encode."""
  name = 'kv-retrieval'
  identity = f'kv-retrieval:v1:{NUM_SYMBOLS}'
  vocab_size = VOCAB_SIZE
  eot_id = EOT

  def encode(self, text: str) -> list[int]:
    raise ConfigError('data.source=kv_retrieval has a synthetic vocabulary: it cannot encode '
                      f'text ({text[:20]!r}); leave sample.prompt empty')

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    raise ConfigError('data.source=kv_retrieval has a synthetic vocabulary: it cannot encode text')

  def decode(self, ids) -> str:
    """E.g. 'a3 : f0 ; 7Q : x2 ? a3 : f0'; eot is skipped, unknown ids show as <id>."""
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    pieces = [_ALPHABET[i] if 0 <= i < NUM_SYMBOLS else _SPECIAL_TEXT.get(i, f' <{i}> ')
              for i in ids_N.tolist()]
    return ' '.join(''.join(pieces).split())

  def token_byte_lengths(self) -> np.ndarray:
    # One "byte" per token, so the loop's bits per byte reads as bits per token.
    return np.ones(VOCAB_SIZE, np.int32)


def sequence_length(num_pairs: int, key_len: int, value_len: int) -> int:
  """Tokens in one row: eot, the pairs each closed by ';', then QUERY key ':' value."""
  return 1 + num_pairs * (key_len + 1 + value_len + 1) + 1 + key_len + 1 + value_len


def _check(*, seq_len, num_pairs, key_len, value_len, batch_size=1):
  for key, value in (('data.kv_pairs', num_pairs), ('data.kv_key_len', key_len),
                     ('data.kv_value_len', value_len), ('train.batch_size', batch_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ConfigError(f'{key}={value!r}: need a positive integer')
  if num_pairs > NUM_SYMBOLS ** key_len:
    raise ConfigError(f'data.kv_pairs={num_pairs} distinct keys cannot be made from '
                      f'data.kv_key_len={key_len} of {NUM_SYMBOLS} symbols '
                      f'({NUM_SYMBOLS ** key_len} keys)')
  need = sequence_length(num_pairs, key_len, value_len)
  if need > seq_len + 1:  # a row holds seq_len inputs plus the last target
    raise ConfigError(f'data.seq_len={seq_len} is too short for the kv retrieval task: '
                      f'data.kv_pairs={num_pairs} pairs with data.kv_key_len={key_len} and '
                      f'data.kv_value_len={value_len} take {need} tokens, so data.seq_len must be '
                      f'at least {need - 1}')


def _distinct_codes(rng, rows: int, n: int, m: int) -> np.ndarray:
  """(rows, n) int64: per row, n distinct uniform draws from [0, m), in random order."""
  if n * n <= m:
    # Sparse: whole-row rejection is exact (iid draws conditioned on being distinct) and a row
    # collides with probability below ~1/2, so it takes about one or two vectorised rounds.
    codes_RN = rng.integers(0, m, (rows, n))
    while True:
      sorted_RN = np.sort(codes_RN, axis=1)
      bad_R = (sorted_RN[:, 1:] == sorted_RN[:, :-1]).any(axis=1)
      if not bad_R.any():
        return codes_RN
      codes_RN[bad_R] = rng.integers(0, m, (int(bad_R.sum()), n))
  # Dense: rejection would rarely succeed; choice without replacement is O(n) per row.
  return np.stack([rng.choice(m, n, replace=False) for _ in range(rows)])


def _digits(codes, length: int) -> np.ndarray:
  """Base-NUM_SYMBOLS digits of codes, most significant first: shape codes.shape + (length,)."""
  powers = NUM_SYMBOLS ** np.arange(length - 1, -1, -1, dtype=np.int64)
  return (codes[..., None] // powers) % NUM_SYMBOLS


def kv_batch(seed: int, step: int, *, batch_size: int, seq_len: int, num_pairs: int,
             key_len: int, value_len: int, gold=None, split: str = 'train') -> dict:
  """The global Batch `step`: inputs, targets, segment_ids, positions (int32), loss_mask (float32),
  each (batch_size, seq_len). A pure function of (seed, step, split, the shape, gold).

  gold=None queries a uniformly random pair per row; an int queries pair `gold` in every row. The
  keys and values do not depend on gold, so batches at different depths differ only in the query.
  """
  _check(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
         batch_size=batch_size)
  if split not in _SPLITS:
    raise ConfigError(f'split={split!r}: want one of {sorted(_SPLITS)}')
  if gold is not None and not 0 <= gold < num_pairs:
    raise ConfigError(f'gold={gold}: want a pair index in [0, {num_pairs})')
  rng = np.random.default_rng([seed, step, _SPLITS[split]])
  b, n = batch_size, num_pairs
  keys_BNK = _digits(_distinct_codes(rng, b, n, NUM_SYMBOLS ** key_len), key_len)
  values_BNV = rng.integers(0, NUM_SYMBOLS, (b, n, value_len))
  gold_B = rng.integers(0, n, b)  # drawn always, so the pairs above do not depend on `gold`
  if gold is not None:
    gold_B = np.full(b, gold)

  def const(token, *lead):
    return np.full(lead + (1,), token, np.int64)

  pairs_BNP = np.concatenate([keys_BNK, const(KV_SEP, b, n), values_BNV, const(PAIR_SEP, b, n)],
                             axis=2)
  rows_B = np.arange(b)
  seq_BL = np.concatenate([const(EOT, b), pairs_BNP.reshape(b, -1), const(QUERY, b),
                           keys_BNK[rows_B, gold_B], const(KV_SEP, b), values_BNV[rows_B, gold_B]],
                          axis=1)
  length = seq_BL.shape[1]
  tokens_BT1 = np.full((b, seq_len + 1), EOT, np.int32)
  tokens_BT1[:, :length] = seq_BL
  index_T = np.arange(seq_len)
  real_T = index_T < length  # every row has the same layout, so one mask serves all
  # Target t is token t+1: the query's value tokens are the last value_len of the sequence.
  scored_T = (index_T >= length - value_len - 1) & (index_T < length - 1)
  return {
      'inputs': np.ascontiguousarray(tokens_BT1[:, :-1]),
      'targets': np.ascontiguousarray(tokens_BT1[:, 1:]),
      'segment_ids': np.broadcast_to(real_T.astype(np.int32), (b, seq_len)).copy(),
      'positions': np.broadcast_to(np.where(real_T, index_T, 0).astype(np.int32),
                                   (b, seq_len)).copy(),
      'loss_mask': np.broadcast_to(scored_T.astype(np.float32), (b, seq_len)).copy(),
  }


class KvLoader:
  """The train loader's interface, over endless fresh kv batches: batch `step` is a pure function
  of (seed, step), so resuming needs only the step."""
  num_rows = 2 ** 31  # informational: rows are generated, never repeated by design

  def __init__(self, *, seed: int, seq_len: int, batch_size: int, num_pairs: int, key_len: int,
               value_len: int):
    _check(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
           batch_size=batch_size)
    self.seed = seed
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.shape = dict(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len)

  def batch(self, step: int, *, process_index: int = 0, process_count: int = 1) -> dict:
    """This process's contiguous slice of global Batch `step` (a Batch, not loader rows)."""
    if self.batch_size % process_count:
      raise ConfigError(f'train.batch_size={self.batch_size} is not divisible by the '
                        f'{process_count} processes')
    local = self.batch_size // process_count
    # Every process draws the whole global batch: rows then do not depend on the process count,
    # and drawing is cheap next to a train step.
    full = kv_batch(self.seed, step, batch_size=self.batch_size, **self.shape)
    return {k: v[process_index * local:(process_index + 1) * local] for k, v in full.items()}


def depths(num_pairs: int, n: int = 5) -> list[int]:
  """n gold indices spread evenly over the pairs, first and last included (fewer if N < n)."""
  return sorted({int(d) for d in np.linspace(0, num_pairs - 1, n).round()})


def _exact_match(logits_BTV, targets_BT, loss_mask_BT):
  """(B,) bool: the argmax equals the target at every scored position. Under teacher forcing this
  is greedy decoding's exact match: decoding goes wrong only after a first wrong argmax."""
  wrong_BT = (jnp.argmax(logits_BTV, axis=-1) != targets_BT) & (loss_mask_BT > 0)
  return ~wrong_BT.any(axis=-1)


@functools.partial(jax.jit, static_argnames=('model',))
def _batch_exact_match(model, params, batch):
  logits_BTV = model.apply({'params': params}, batch['inputs'], batch['positions'],
                           batch['segment_ids'])
  return _exact_match(logits_BTV, batch['targets'], batch['loss_mask'])


def depth_accuracy(model, params, *, seed: int, seq_len: int, num_pairs: int, key_len: int,
                   value_len: int, rows: int, batch_size: int) -> dict:
  """Exact-match accuracy of retrieving the gold value at each of depths(num_pairs), over `rows`
  held-out rows per depth. The rows do not depend on batch_size, and every depth queries the
  same pair lists, so depths differ only in which pair is asked for."""
  if rows < 1 or batch_size < 1:
    raise ConfigError(f'rows={rows}, batch_size={batch_size}: both must be positive')
  result = {'depths': depths(num_pairs), 'accuracy': [], 'rows': rows, 'num_pairs': num_pairs}
  for gold in result['depths']:
    batch = kv_batch(seed, 0, batch_size=rows, seq_len=seq_len, num_pairs=num_pairs,
                     key_len=key_len, value_len=value_len, gold=gold, split='eval')
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
  if d.source != 'kv_retrieval':
    raise ConfigError(f'--workdir={workdir}: a run on data.source={d.source}, '
                      'not a kv_retrieval run')
  shape = dict(num_pairs=d.kv_pairs, key_len=d.kv_key_len, value_len=d.kv_value_len)
  result = depth_accuracy(tr.model, params, seed=resolved.seed, seq_len=d.seq_len,
                          rows=rows, batch_size=resolved.train.batch_size, **shape)
  result = {'step': step, 'seq_len': d.seq_len, **shape, **result}
  tmp = os.path.join(workdir, 'kv_depths.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'kv_depths.json'))
  return result
