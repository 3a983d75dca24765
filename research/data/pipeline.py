"""The data pipeline: a config in, this process's train and eval Batches out.

  config -> task (a text corpus + tokenizer + token cache + loader + objective, or a synthetic
  source) -> text-to-text examples -> the architecture's feature converter -> Batch

A task is chosen by `data.source` from SOURCES (synthetic tasks by name; everything else is a
text corpus, research/data/sources.py). The same objective makes the training and the evaluation
examples, and everything is a pure function of (config, step): a resumed run reads exactly the
batches of the uninterrupted one.
"""

import dataclasses
import math

import numpy as np

from research import objectives
from research.data import cache, kv_retrieval, loader as loader_lib, sources, tokenizers
from research.data.features import ExampleLengths
from research.errors import ConfigError


@dataclasses.dataclass
class Data:
  tokenizer: object
  task: object
  converter: object  # the architecture's feature converter (research/data/features.py)
  lengths: ExampleLengths
  eval_batches: list  # this process's rows of each eval Batch
  split: dict
  unigram_bits: float  # the held-out targets' unigram entropy (bits per byte, or per token)
  process_index: int = 0
  process_count: int = 1

  def epochs(self, steps: int) -> float:
    """Passes over the train split that `steps` steps make (nan for a synthetic task)."""
    return self.task.epochs(steps)

  def train_batch(self, step: int) -> dict:
    """This process's part of the global Batch for `step`."""
    return self.converter(self.task.train_examples(step, self.process_index, self.process_count),
                          self.lengths)


def byte_unigram_bits(texts) -> float:
  """Entropy of the texts' byte frequencies: bits/byte of a model that knows only those."""
  counts = np.zeros(256, np.int64)
  for t in texts:
    counts += np.bincount(np.frombuffer(t.encode('utf-8'), np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def special_ids(tokenizer) -> objectives.SpecialIds:
  """The ids an objective writes (mask, paradigm tokens, sentinels) of this tokenizer."""
  if not isinstance(tokenizer, tokenizers.WithSpecialTokens):
    return objectives.SpecialIds(eos=tokenizer.eot_id, text_vocab_size=tokenizer.sample_vocab_size)
  return objectives.SpecialIds(
      eos=tokenizer.eot_id, text_vocab_size=tokenizer.sample_vocab_size, mask=tokenizer.mask_id,
      paradigm=dict(tokenizer.paradigm_ids), top=tokenizer.vocab_size - 1,
      num_sentinels=tokenizer.extra_ids)


class TextTask:
  """A text corpus under an objective (objective.name)."""
  EVALUATION = 'lengths'  # what launch.evaluate scores a run of it by, unless told otherwise

  @staticmethod
  def archs(config) -> tuple:
    return objectives.OBJECTIVES[config.objective.name].ARCHS

  @staticmethod
  def example_lengths(config) -> ExampleLengths:
    return objectives.build(config).lengths()

  @staticmethod
  def vocab_size(config) -> int:
    """The vocabulary the run gets, special tokens included, without reading the corpus."""
    from research import config as config_lib
    d = config.data
    if d.tokenizer == 'byte':
      base = tokenizers.ByteTokenizer.vocab_size
    elif d.tokenizer == 'bpe':  # trained to exactly this size, or the run fails
      base = d.vocab_size
    else:
      base = tokenizers.load_tiktoken(d.tokenizer).vocab_size
    extra = config_lib.resolved_extra_ids(config)
    return base + (1 + len(tokenizers.PARADIGM_TOKENS) + extra if extra >= 0 else 0)

  def __init__(self, config):
    from research import config as config_lib, distributed
    d = config.data
    self.config = config
    corpus = sources.load_corpus(d.source, text_field=d.text_field, eval_fraction=d.eval_fraction)

    def build():
      try:
        tok = tokenizers.build_tokenizer(d.tokenizer, vocab_size=d.vocab_size, corpus=corpus,
                                         cache_dir=d.cache_dir)
        return tok, cache.cached_streams(corpus, tok, d.cache_dir)
      except OSError as e:
        raise ConfigError(f'data.cache_dir={d.cache_dir}: cannot write the cache there '
                          f'({e.strerror or e})') from None

    # Process 0 builds the tokenizer and token cache first; the others then find them (a shared
    # cache_dir) or build the same ones deterministically (a cache per host).
    if distributed.is_lead():
      base, streams = build()
    distributed.sync('token cache built')
    if not distributed.is_lead():
      base, streams = build()
    self.tokenizer = tokenizers.with_special_tokens(base, config_lib.resolved_extra_ids(config))
    self.split = corpus.split
    self.streams = streams
    self.objective = objectives.build(config)
    self.ids = special_ids(self.tokenizer)
    self.loader = loader_lib.Loader(streams['train'], seq_len=d.seq_len,
                                    batch_size=config.train.batch_size, seed=config.seed,
                                    document_mask=d.document_mask)
    wanted = self.epochs(config.train.steps)
    if d.max_epochs and wanted > d.max_epochs:
      raise ConfigError(f'train.steps={config.train.steps} reads the train split '
                        f'{wanted:.2f} times ({config.train.steps * config.train.batch_size:,} '
                        f'rows of {self.loader.num_rows:,}); data.max_epochs={d.max_epochs:g} '
                        'allows fewer (raise it, or 0 for no limit)')

  def epochs(self, steps: int) -> float:
    return steps * self.config.train.batch_size / self.loader.num_rows

  def train_examples(self, step: int, process_index: int, process_count: int) -> dict:
    rows = self.loader.batch(step, process_index=process_index, process_count=process_count)
    local = len(rows['tokens'])
    draws = objectives.Draws(self.config.seed, 'train', step, first_row=process_index * local,
                             num_rows=local, global_rows=self.config.train.batch_size)
    return self.objective(rows['tokens'], rows['segment_ids'], draws, self.ids)

  def eval_examples(self) -> list:
    """The held-out rows under the objective, in global batches (the last may be short)."""
    c = self.config
    rows = loader_lib.eval_rows(self.streams['eval'], seq_len=c.data.seq_len,
                                max_rows=c.eval.max_batches * c.train.batch_size,
                                document_mask=c.data.document_mask)
    out = []
    b = c.train.batch_size
    for i in range(0, len(rows['tokens']), b):
      chunk = {k: v[i:i + b] for k, v in rows.items()}
      draws = objectives.Draws(c.seed, 'eval', i // b, num_rows=len(chunk['tokens']))
      out.append(self.objective(chunk['tokens'], chunk['segment_ids'], draws, self.ids))
    return out

  def baseline_bits(self, eval_batches) -> float:
    """Byte-unigram entropy of exactly the text the eval batches' targets spell."""
    texts = []
    for batch in eval_batches:
      for targets_T, mask_T in zip(batch['targets'], batch['loss_mask']):
        ids_T = targets_T[(mask_T > 0) & (targets_T < self.tokenizer.sample_vocab_size)]
        texts.append(self.tokenizer.decode(ids_T))
    return byte_unigram_bits(texts)


# data.source values that name a synthetic task; any other is a text corpus.
SOURCES = {'kv_retrieval': kv_retrieval.KvTask}


def task_class(config):
  return SOURCES.get(config.data.source, TextTask)


def task_archs(config) -> tuple:
  """The model.arch values the config's task (and objective) runs on."""
  return task_class(config).archs(config)


def example_lengths(config) -> ExampleLengths:
  return task_class(config).example_lengths(config)


def vocab_size(config) -> int:
  """The run's vocabulary (special tokens included) without reading any data."""
  return task_class(config).vocab_size(config)


def converter(config, bos_id: int):
  """The feature converter of config.model.arch."""
  from research.model import archs  # the architecture names its converter
  return archs.arch_class(config.model.arch).features(
      loss_on_inputs=config.objective.loss_on == 'all', bos_id=bos_id)


def model_lengths(config) -> dict:
  """{'length': ..., ['encoder_length': ...]}: the model's sequence lengths for this config."""
  return converter(config, bos_id=0).model_lengths(example_lengths(config))


def _local_slice(batch: dict, process_index: int, process_count: int) -> dict:
  """This process's contiguous rows of a global batch, as the train loader gives them."""
  per = len(next(iter(batch.values()))) // process_count
  return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


def pad_rows(batch: dict, rows: int) -> dict:
  """A short batch padded with all-zero rows, which predict nothing and attend nothing."""
  pad = rows - len(next(iter(batch.values())))
  if not pad:
    return batch
  return {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def prepare(config) -> Data:
  """The task of config, this process's eval Batches, and the train Batch of any step."""
  import jax
  task = task_class(config)(config)
  conv = converter(config, bos_id=task.tokenizer.eot_id)
  lengths = task.example_lengths(config)
  full = [conv(ex, lengths) for ex in task.eval_examples()]
  b = config.train.batch_size
  eval_batches = [_local_slice(pad_rows(batch, b), jax.process_index(), jax.process_count())
                  for batch in full]
  return Data(task.tokenizer, task, conv, lengths, eval_batches, task.split,
              task.baseline_bits(full), jax.process_index(), jax.process_count())


def tokens_per_example(lengths: dict) -> int:
  """Tokens one example puts through the model: every sequence's length."""
  return int(sum(lengths.values()))

