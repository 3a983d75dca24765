"""T5's prefix language modelling: each row split at a point uniform in [1, n - 1]; the tokens
before it are the inputs, the rest the targets, each followed by end-of-text."""

import numpy as np

from research.data import features as features_lib
from research.objectives import Objective, example


def split_at(tokens_BN, split_B, eos: int, extra_first=None):
  """(inputs, targets) example arrays of rows cut before index split_B; extra_first: a token put
  before the inputs (UL2's [S2S]). Inputs are padded to n (+1 with extra_first), targets to n."""
  b, n = tokens_BN.shape
  lead = 0 if extra_first is None else 1
  if lead:
    tokens_BN = np.concatenate([np.full((b, 1), extra_first), tokens_BN], axis=1)
    split_B = split_B + 1
  s_B1 = split_B[:, None]
  j_1I = np.arange(n + lead)[None]
  source = np.pad(tokens_BN, ((0, 0), (0, 1)))
  inputs_BI = np.where(j_1I < s_B1, source[:, :n + lead], np.where(j_1I == s_B1, eos, 0))
  j_1L = np.arange(n)[None]
  rest_BL = np.take_along_axis(source, np.clip(s_B1 + j_1L, 0, n + lead), axis=1)
  left_B1 = n + lead - s_B1
  targets_BL = np.where(j_1L < left_B1, rest_BL, np.where(j_1L == left_B1, eos, 0))
  return example(inputs_BI, j_1I <= s_B1, targets_BL, j_1L <= left_B1)


class PrefixLM(Objective):
  """objective.name=prefix_lm."""

  def lengths(self):
    # Inputs up to n - 1 tokens + eos; targets up to n - 1 + eos; n + 2 in all.
    return features_lib.ExampleLengths(inputs=self.n, targets=self.n, total=self.n + 2)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1
    split_B = draws.integers(1, self.n)
    return split_at(np.asarray(tokens_BN1)[:, :self.n], split_B, ids.eos)
