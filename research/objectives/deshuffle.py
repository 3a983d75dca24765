"""Deshuffling (T5 Table 4): the row's tokens in a uniformly random order as the inputs, the
original order as the targets, each followed by end-of-text."""

import numpy as np

from research.data import features as features_lib
from research.objectives import Objective, example
from research.objectives.bert import with_eos


class Deshuffle(Objective):

  def lengths(self):
    return features_lib.ExampleLengths(self.n + 1, self.n + 1, 2 * self.n + 2)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1
    tokens_BN = np.asarray(tokens_BN1)[:, :self.n].astype(np.int64)
    order_BN = np.argsort(draws.random(self.n), axis=1)
    shuffled_BN = np.take_along_axis(tokens_BN, order_BN, axis=1)
    real_BX = np.ones((len(tokens_BN), self.n + 1), bool)
    return example(with_eos(shuffled_BN, ids.eos), real_BX, with_eos(tokens_BN, ids.eos), real_BX)
