"""BERT-style masked language modelling (Devlin et al. 2019; T5 Table 4's "BERT-style").

Exactly round(n * objective.noise_density) positions per row are chosen uniformly (BERT's data
pipeline picks a fixed count; T5 draws each token independently). A chosen token becomes the
mask token with probability objective.bert_mask_rate, a uniformly random text token with
objective.bert_random_rate, and stays itself otherwise. Inputs are the corrupted row and targets
the original, both followed by end-of-text:
- text-to-text architectures predict the whole original (T5's variant: 90% mask, 10% random);
- `encoder` predicts each token in place with the loss on the chosen positions only (classic
  BERT: 80% mask, 10% random, 10% kept), through the example's mlm_weights.
bert_mask_rate -1 (the default) resolves to 0.8 on `encoder` and 0.9 elsewhere.
"""

import numpy as np

from research.data import features as features_lib
from research.errors import ConfigError
from research.objectives import (TEXT_TO_TEXT_ARCHS, Objective, example, num_noise_tokens)


def choose(n: int, count: int, draws) -> np.ndarray:
  """[B, n] bool with exactly `count` True per row, uniformly placed."""
  u_BN = draws.random(n)
  chosen_BN = np.zeros(u_BN.shape, bool)
  if count:
    index_BC = np.argpartition(u_BN, count - 1, axis=1)[:, :count]
    chosen_BN[np.arange(len(u_BN))[:, None], index_BC] = True
  return chosen_BN


def with_eos(x_BN, eos: int):
  b = len(x_BN)
  return np.concatenate([x_BN, np.full((b, 1), eos, x_BN.dtype)], axis=1)


class BertMLM(Objective):
  ARCHS = TEXT_TO_TEXT_ARCHS + ('encoder',)

  def check(self) -> None:
    super().check()
    o = self.o
    if not 0.0 < o.noise_density < 1.0:
      raise ConfigError(f'objective.noise_density={o.noise_density!r}: must be in (0, 1)')
    for key in ('bert_mask_rate', 'bert_random_rate'):
      if not 0.0 <= o[key] <= 1.0:
        raise ConfigError(f'objective.{key}={o[key]!r}: must be in [0, 1] (resolved)')
    if o.bert_mask_rate + o.bert_random_rate > 1.0 + 1e-9:
      raise ConfigError(f'objective.bert_mask_rate + objective.bert_random_rate = '
                        f'{o.bert_mask_rate + o.bert_random_rate:g} exceeds 1')

  def lengths(self):
    return features_lib.ExampleLengths(self.n + 1, self.n + 1, 2 * self.n + 2)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1
    tokens_BN = np.asarray(tokens_BN1)[:, :self.n].astype(np.int64)
    chosen_BN = choose(self.n, num_noise_tokens(self.n, self.o.noise_density), draws)
    u_BN = draws.random(self.n)
    # A random replacement is a text token: any id of the text vocabulary but end-of-text.
    random_BN = draws.integers(0, ids.text_vocab_size - 1, self.n)
    random_BN += random_BN >= ids.eos
    to_mask_BN = chosen_BN & (u_BN < self.o.bert_mask_rate)
    to_random_BN = chosen_BN & ~to_mask_BN & (u_BN < self.o.bert_mask_rate +
                                              self.o.bert_random_rate)
    corrupted_BN = np.where(to_mask_BN, ids.mask, np.where(to_random_BN, random_BN, tokens_BN))
    real_BX = np.ones((len(tokens_BN), self.n + 1), bool)
    weights_BX = np.pad(chosen_BN, ((0, 0), (0, 1))).astype(np.float32)
    return example(with_eos(corrupted_BN, ids.eos), real_BX, with_eos(tokens_BN, ids.eos),
                   real_BX, mlm_weights=weights_BX)
