"""Pre-training objectives behind `objective.name`: packed token rows in, text-to-text examples out.

Each objective is a class in OBJECTIVES. Built from the config (`build`), it knows its example
lengths (`lengths`, research/data/features.py's ExampleLengths) and how many sentinel ids it
needs (`extra_ids`) before any data exists; called on this process's loader rows with `Draws`,
it returns an example {inputs, inputs_segment_ids, targets, targets_segment_ids[, mlm_weights]}
(int32, right-padded) that the architecture's feature converter turns into a Batch. Every random
choice comes from `Draws`, a pure function of (seed, split, step) drawn for the whole global
batch, so an objective's output does not depend on the process count, and a resumed run
corrupts each row exactly as the uninterrupted one did.

  causal_lm        next-token prediction over the whole row (GPT; BigScience's "full LM")
  prefix_lm        the row split uniformly in [1, n-1]: inputs, then the rest as targets (T5)
  span_corruption  T5's span corruption (research/objectives/span_corruption.py)
  bert_mlm         BERT-style masking: T5's text-to-text variant, or classic BERT on `encoder`
  deshuffle        the row's tokens permuted as inputs, the original as targets (T5 Table 4)
  iid_drop         i.i.d. corrupted tokens dropped from the inputs and listed as targets
  iid_replace      i.i.d. corrupted tokens, each run of them replaced by one sentinel (T5 Table 5)
  ul2              UL2's mixture of R, X and S denoisers with paradigm tokens (Tay et al. 2022)
"""

import dataclasses

import ml_collections
import numpy as np

from research.errors import ConfigError

SPLITS = {'train': 0, 'eval': 1, 'downstream': 2}

# The model.arch values a text-to-text objective runs on (the encoder needs aligned examples).
TEXT_TO_TEXT_ARCHS = ('decoder', 'prefix_lm', 'encoder_decoder')


class Draws:
  """Random numbers for the whole global batch, of which this process gets its own rows.

  Every process makes the same calls in the same order with the global row count, so row r's
  noise is the same whichever process loads it (and however many there are).
  """

  def __init__(self, seed: int, split: str, step: int, *, first_row: int = 0,
               num_rows: int, global_rows: int = 0):
    self.rng = np.random.default_rng([seed, SPLITS[split], step])
    self.rows = slice(first_row, first_row + num_rows)
    self.global_rows = global_rows or num_rows
    if self.rows.stop > self.global_rows:
      raise ValueError(f'rows {self.rows} outside a batch of {self.global_rows}')

  def random(self, *shape) -> np.ndarray:
    """Uniform [0, 1) floats, [rows, *shape]."""
    return self.rng.random((self.global_rows, *shape))[self.rows]

  def integers(self, low, high, *shape) -> np.ndarray:
    """Uniform ints in [low, high), [rows, *shape]; low and high are ints or [rows] arrays."""
    def per_row(x):
      x = np.asarray(x)
      return x.reshape((-1,) + (1,) * len(shape)) if x.ndim else x
    low, high = per_row(low), per_row(high)
    return (low + np.floor(self.random(*shape) * (high - low))).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The ids of a tokenizer's special tokens (research/data/tokenizers.py)."""
  eos: int  # end of text: ends inputs and targets, starts the decoder
  text_vocab_size: int  # ids below are text (and eos); random replacements draw from them
  mask: int = -1  # BERT's [MASK]
  paradigm: dict = dataclasses.field(default_factory=dict)  # UL2: {'[NLU]': id, ...}
  top: int = -1  # sentinel 0 (T5's <extra_id_0>); sentinel k is top - k
  num_sentinels: int = 0

  def sentinels(self, k_BX: np.ndarray) -> np.ndarray:
    return self.top - k_BX


def example(inputs_BI, inputs_real_BI, targets_BL, targets_real_BL, **extra) -> dict:
  """The example dict, padding zeroed, segment id 1 on real tokens."""
  inputs_seg = inputs_real_BI.astype(np.int32)
  targets_seg = targets_real_BL.astype(np.int32)
  return {'inputs': np.where(inputs_seg > 0, inputs_BI, 0).astype(np.int32),
          'inputs_segment_ids': inputs_seg,
          'targets': np.where(targets_seg > 0, targets_BL, 0).astype(np.int32),
          'targets_segment_ids': targets_seg, **extra}


def compact(tokens_BN: np.ndarray, keep_BN: np.ndarray, length: int, end_id: int):
  """Per row, the kept tokens in order, then end_id, right-padded to `length`: ([B, length]
  tokens, [B, length] bool real)."""
  b, n = tokens_BN.shape
  order_BN = np.argsort(~keep_BN, axis=1, kind='stable')
  kept_BN = np.take_along_axis(tokens_BN, order_BN, axis=1)
  count_B1 = keep_BN.sum(axis=1, keepdims=True)
  if count_B1.max(initial=0) + 1 > length:
    raise ValueError(f'{count_B1.max() + 1} tokens do not fit in {length}')
  j_1L = np.arange(length)[None]
  kept_BL = np.zeros((b, length), np.int64)
  kept_BL[:, :min(n, length)] = kept_BN[:, :length]
  out_BL = np.where(j_1L < count_B1, kept_BL, np.where(j_1L == count_B1, end_id, 0))
  return out_BL, j_1L <= count_B1


def float32_round(x) -> int:
  """round(x) as T5's TensorFlow code computes it: in float32, halves to even."""
  return int(np.round(np.float32(x)))


def num_noise_tokens(length: int, density: float) -> int:
  """T5's round(length * density) in float32, clipped to [1, length - 1]."""
  length = max(length, 2)
  n = float32_round(np.float32(length) * np.float32(density))
  return min(max(n, 1), length - 1)


class Objective:
  """The base of every objective: a row length n and what the config says."""
  ARCHS = TEXT_TO_TEXT_ARCHS
  NEEDS_SPECIAL_TOKENS = True
  # Its inputs end with end-of-text (T5's text-to-text format); prompts of the downstream
  # evaluation are written the same way (research/evaluate/downstream.py).
  INPUTS_END_WITH_EOS = True

  def __init__(self, o, seq_len: int):
    self.o = o  # the config's objective section
    self.n = seq_len  # raw tokens per example (the loader's rows carry one more)
    self.check()

  def check(self) -> None:
    if self.n < 2:
      raise ConfigError(f'data.seq_len={self.n} is too short for objective.name={self.o.name} '
                        '(need at least 2 tokens to corrupt)')

  def extra_ids(self) -> int:
    """Sentinels the objective may use in one example."""
    return 0

  def lengths(self):
    raise NotImplementedError

  def __call__(self, tokens_BN1, segment_ids_BN1, draws: Draws, ids: SpecialIds) -> dict:
    raise NotImplementedError


from research.objectives import (bert, causal_lm, deshuffle, iid, prefix_lm,  # noqa: E402
                                 span_corruption, ul2)
from research.objectives.span_corruption import (random_spans_helper,  # noqa: E402,F401
                                                 random_spans_noise_mask)

OBJECTIVES = {
    'causal_lm': causal_lm.CausalLM,
    'prefix_lm': prefix_lm.PrefixLM,
    'span_corruption': span_corruption.SpanCorruption,
    'bert_mlm': bert.BertMLM,
    'deshuffle': deshuffle.Deshuffle,
    'iid_drop': iid.IidDrop,
    'iid_replace': iid.IidReplace,
    'ul2': ul2.UL2,
}


def build(config) -> Objective:
  """The objective of config.objective.name, on rows of config.data.seq_len tokens."""
  name = config.objective.name
  if name not in OBJECTIVES:
    raise ConfigError(f'objective.name={name!r} is not one of {", ".join(OBJECTIVES)}')
  o = config.objective
  if o.bert_mask_rate < 0:  # BERT's 80% [MASK] on an encoder; T5's 90% on text-to-text models
    o = ml_collections.ConfigDict(o.to_dict())
    o.bert_mask_rate = 0.8 if config.model.arch == 'encoder' else 0.9
  return OBJECTIVES[name](o, config.data.seq_len)
