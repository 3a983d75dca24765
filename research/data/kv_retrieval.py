"""Synthetic key-value retrieval: the "lost in the middle" probe (Liu et al. 2023).

A row lists `num_pairs` random key-value pairs, then queries one key; the model must produce that
key's value. Accuracy as a function of where the queried (gold) pair sits in the list shows
whether a model uses the middle of its context as well as its ends.

  [EOT] k1 : v1 ; k2 : v2 ; ... ; kN : vN ; QUERY kq :  ->  vq

Training rows may ask several queries (`queries`, data.kv_queries), each answer scored, as in
multi-query associative recall (Arora et al. 2023, Zoology): a row then asks for retrieval Q times
where one query gives a single scored token. Each further query asks a uniformly random pair, with
replacement: had they asked distinct pairs, the last answers would follow by elimination from the
values already asked, and a model can lower its loss that way without retrieving anything (a
measured failure, docs/positional.md). The first query of such a row sees exactly a one-query
row, and the depth evaluation asks one query per row, as Liu et al. do:

  [EOT] k1 : v1 ; ... ; kN : vN ; QUERY kq : vq QUERY kr : vr ...

Ids 0..NUM_SYMBOLS-1 are content symbols; the rest are the special tokens below. As an example
(research/data/features.py), everything up to the query's ':' is the inputs and the value is the
targets, so every architecture that reads text-to-text examples can be probed. `KvTask` is the
data pipeline's source `kv_retrieval` (research/data/pipeline.py); research/evaluate/kv_depths.py
scores a trained run by the gold pair's depth.
"""

import numpy as np

from research.data import features
from research.errors import ConfigError

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
  sample_vocab_size = VOCAB_SIZE
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


def sequence_length(num_pairs: int, key_len: int, value_len: int, queries: int = 1) -> int:
  """Tokens in one row: eot, the pairs each closed by ';', then per query QUERY key ':' value."""
  return 1 + num_pairs * (key_len + 1 + value_len + 1) + queries * (1 + key_len + 1 + value_len)


def _check(*, seq_len, num_pairs, key_len, value_len, batch_size=1, queries=1):
  for key, value in (('data.kv_pairs', num_pairs), ('data.kv_key_len', key_len),
                     ('data.kv_value_len', value_len), ('train.batch_size', batch_size),
                     ('data.kv_queries', queries)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ConfigError(f'{key}={value!r}: need a positive integer')
  if num_pairs > NUM_SYMBOLS ** key_len:
    raise ConfigError(f'data.kv_pairs={num_pairs} distinct keys cannot be made from '
                      f'data.kv_key_len={key_len} of {NUM_SYMBOLS} symbols '
                      f'({NUM_SYMBOLS ** key_len} keys)')
  need = sequence_length(num_pairs, key_len, value_len, queries)
  if need > seq_len + 1:  # a row holds seq_len inputs plus the last target
    raise ConfigError(f'data.seq_len={seq_len} is too short for the kv retrieval task: '
                      f'data.kv_pairs={num_pairs} pairs with data.kv_key_len={key_len}, '
                      f'data.kv_value_len={value_len} and data.kv_queries={queries} take {need} '
                      f'tokens, so data.seq_len must be at least {need - 1}')


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


def kv_example(seed: int, step: int, *, batch_size: int, seq_len: int, num_pairs: int,
               key_len: int, value_len: int, gold=None, split: str = 'train',
               queries: int = 1) -> dict:
  """The global batch `step` as a text-to-text example (research/data/features.py): inputs are
  eot, the pairs, QUERY, the queried key and ':'; targets are its value, then for each further
  query QUERY key ':' value, only the values weighted (targets_weights). A pure function of
  (seed, step, split, the shape, gold, queries).

  gold=None queries a uniformly random pair per row first; an int queries pair `gold` in every
  row. The keys and values do not depend on gold, so batches at different depths differ only in
  the query. Further queries ask uniformly random pairs, with replacement.
  """
  _check(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
         batch_size=batch_size, queries=queries)
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
  inputs_BI = np.concatenate([const(EOT, b), pairs_BNP.reshape(b, -1), const(QUERY, b),
                              keys_BNK[rows_B, gold_B], const(KV_SEP, b)], axis=1)
  targets_BV = values_BNV[rows_B, gold_B]
  # Only the queries' values are scored, so the loss is the retrieval loss alone: keys and values
  # are random, and predicting them would only add irreducible noise to the metric.
  example = {}
  if queries > 1:
    # Drawn after everything above, so one-query rows are unchanged.
    rest_BR = rng.integers(0, n, (b, queries - 1))
    more_BRX = np.concatenate([const(QUERY, b, queries - 1), keys_BNK[rows_B[:, None], rest_BR],
                               const(KV_SEP, b, queries - 1), values_BNV[rows_B[:, None], rest_BR]],
                              axis=2)
    more_weights_BRX = np.concatenate([np.zeros((b, queries - 1, key_len + 2), np.float32),
                                       np.ones((b, queries - 1, value_len), np.float32)], axis=2)
    example['targets_weights'] = np.concatenate(
        [np.ones(targets_BV.shape, np.float32), more_weights_BRX.reshape(b, -1)], axis=1)
    targets_BV = np.concatenate([targets_BV, more_BRX.reshape(b, -1)], axis=1)
  return {'inputs': inputs_BI.astype(np.int32), 'inputs_segment_ids': np.ones_like(inputs_BI, np.int32),
          'targets': targets_BV.astype(np.int32),
          'targets_segment_ids': np.ones_like(targets_BV, np.int32), **example}


def example_lengths(*, seq_len: int, num_pairs: int, key_len: int, value_len: int,
                    queries: int = 1):
  """The examples' lengths; a decoder-only model reads them padded to data.seq_len tokens."""
  inputs = sequence_length(num_pairs, key_len, value_len) - value_len
  targets = sequence_length(num_pairs, key_len, value_len, queries) - inputs
  return features.ExampleLengths(inputs=inputs, targets=targets, total=seq_len + 1)


def kv_batch(seed: int, step: int, *, batch_size: int, seq_len: int, num_pairs: int,
             key_len: int, value_len: int, gold=None, split: str = 'train',
             queries: int = 1) -> dict:
  """kv_example as a decoder's Batch: inputs, targets, segment_ids, positions (int32), loss_mask
  (float32), each (batch_size, seq_len); the loss only on the queries' values."""
  shape = dict(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
               queries=queries)
  example = kv_example(seed, step, batch_size=batch_size, gold=gold, split=split, **shape)
  return features.DecoderOnly()(example, example_lengths(**shape))


def curriculum_pairs(step: int, *, num_pairs: int, curriculum_steps: int) -> int:
  """Pairs per row at train step `step`. With a curriculum (curriculum_steps > 0) the rows hold
  1, 2, ..., num_pairs pairs in equal stages over the first curriculum_steps steps, then
  num_pairs: one pair teaches copying a value from the context, a few teach matching the key,
  before the full task's one-in-num_pairs signal. A pure function of the step, so a resumed run
  reads the same rows."""
  if curriculum_steps <= 0 or step >= curriculum_steps:
    return num_pairs
  return 1 + step * num_pairs // curriculum_steps


class KvLoader:
  """Endless fresh kv examples: example `step` is a pure function of (seed, step), so resuming
  needs only the step. curriculum_steps > 0 grows the pairs per row (curriculum_pairs); shorter
  rows are right-padded to the same shape."""
  num_rows = 2 ** 31  # informational: rows are generated, never repeated by design

  def __init__(self, *, seed: int, seq_len: int, batch_size: int, num_pairs: int, key_len: int,
               value_len: int, queries: int = 1, curriculum_steps: int = 0):
    _check(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
           batch_size=batch_size, queries=queries)
    if not isinstance(curriculum_steps, (int, np.integer)) or curriculum_steps < 0:
      raise ConfigError(f'data.kv_curriculum_steps={curriculum_steps!r}: need a non-negative '
                        'integer (0: no curriculum)')
    self.seed = seed
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.curriculum_steps = curriculum_steps
    self.shape = dict(seq_len=seq_len, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
                      queries=queries)

  def batch(self, step: int, *, process_index: int = 0, process_count: int = 1) -> dict:
    """This process's contiguous slice of global example `step`."""
    if self.batch_size % process_count:
      raise ConfigError(f'train.batch_size={self.batch_size} is not divisible by the '
                        f'{process_count} processes')
    local = self.batch_size // process_count
    # Every process draws the whole global batch: rows then do not depend on the process count,
    # and drawing is cheap next to a train step.
    pairs = curriculum_pairs(step, num_pairs=self.shape['num_pairs'],
                             curriculum_steps=self.curriculum_steps)
    full = kv_example(self.seed, step, batch_size=self.batch_size,
                      **dict(self.shape, num_pairs=pairs))
    return {k: v[process_index * local:(process_index + 1) * local] for k, v in full.items()}


def depths(num_pairs: int, n: int = 5) -> list[int]:
  """n gold indices spread evenly over the pairs, first and last included (fewer if N < n)."""
  return sorted({int(d) for d in np.linspace(0, num_pairs - 1, n).round()})




class KvTask:
  """data.source=kv_retrieval for the data pipeline: no corpus and no tokenizer to train; the
  objective is the task itself (objective.name must stay causal_lm, its default)."""
  split = None
  EVALUATION = 'kv_depths'  # what launch.evaluate scores a run of it by

  @staticmethod
  def archs(config) -> tuple:
    if config.objective.name != 'causal_lm':
      raise ConfigError(f'data.source=kv_retrieval is a task of its own (the loss on the queried '
                        f'value); objective.name={config.objective.name} does not apply to it')
    return ('decoder', 'prefix_lm', 'encoder_decoder')

  @staticmethod
  def shape(config) -> dict:
    d = config.data
    return dict(seq_len=d.seq_len, num_pairs=d.kv_pairs, key_len=d.kv_key_len,
                value_len=d.kv_value_len, queries=d.kv_queries)

  @staticmethod
  def example_lengths(config):
    return example_lengths(**KvTask.shape(config))

  @staticmethod
  def vocab_size(config) -> int:
    del config
    return VOCAB_SIZE

  def __init__(self, config):
    self.config = config
    self.tokenizer = SyntheticTokenizer()
    self.loader = KvLoader(seed=config.seed, batch_size=config.train.batch_size,
                           curriculum_steps=config.data.kv_curriculum_steps,
                           **self.shape(config))
    self.split = {'source': 'kv_retrieval', 'eval': 'a disjoint random stream',
                  **self.loader.shape}

  def train_examples(self, step: int, process_index: int, process_count: int) -> dict:
    return self.loader.batch(step, process_index=process_index, process_count=process_count)

  def epochs(self, steps: int) -> float:
    del steps
    return float('nan')  # fresh rows every step: nothing is ever repeated

  def eval_examples(self) -> list:
    c = self.config
    return [kv_example(c.seed, i, batch_size=c.train.batch_size, split='eval',
                       **self.shape(c)) for i in range(c.eval.max_batches)]

  def baseline_bits(self, eval_batches) -> float:
    """Bits per predicted symbol of a model that knows only the symbol frequencies."""
    targets = np.concatenate([e['targets'][e['loss_mask'] > 0] for e in eval_batches])
    p = np.bincount(targets) / len(targets)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())
