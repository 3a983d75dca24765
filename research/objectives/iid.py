"""T5 Table 5's i.i.d. corruptions at objective.noise_density: "drop corrupted tokens" and
"replace corrupted spans".

Exactly round(n * density) positions per row are corrupted, chosen uniformly (T5 draws each
token independently, so its counts vary by row; a fixed count keeps the example lengths fixed,
with the same expected corruption).
- iid_drop: the corrupted tokens are removed from the inputs; the targets are those tokens.
- iid_replace: each run of consecutive corrupted tokens becomes one sentinel in the inputs, and
  the targets list each sentinel with its run, as span corruption does with spans of mean
  length 1 / (1 - density) that fall where they may.
"""

import numpy as np

from research.data import features as features_lib
from research.errors import ConfigError
from research.objectives import Objective, compact, example, num_noise_tokens
from research.objectives.bert import choose
from research.objectives.span_corruption import sentinel_example


class _Iid(Objective):

  def check(self) -> None:
    super().check()
    if not 0.0 < self.o.noise_density < 1.0:
      raise ConfigError(f'objective.noise_density={self.o.noise_density!r}: must be in (0, 1)')

  @property
  def noise(self) -> int:
    return num_noise_tokens(self.n, self.o.noise_density)

  def mask(self, draws):
    return choose(self.n, self.noise, draws)


class IidDrop(_Iid):

  def lengths(self):
    inputs, targets = self.n - self.noise + 1, self.noise + 1
    return features_lib.ExampleLengths(inputs, targets, inputs + targets)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1
    tokens_BN = np.asarray(tokens_BN1)[:, :self.n].astype(np.int64)
    noise_BN = self.mask(draws)
    lengths = self.lengths()
    inputs = compact(tokens_BN, ~noise_BN, lengths.inputs, ids.eos)
    targets = compact(tokens_BN, noise_BN, lengths.targets, ids.eos)
    return example(*inputs, *targets)


class IidReplace(_Iid):

  def runs(self) -> int:
    """The most runs of corrupted tokens a row can have: one per corrupted token, and no more
    than the uncorrupted tokens (plus one) can keep apart."""
    return min(self.noise, self.n - self.noise + 1)

  def extra_ids(self) -> int:
    return self.runs() + 1  # a row ending uncorrupted ends its targets with one more sentinel

  def lengths(self):
    runs = self.runs()
    inputs, targets = self.n - self.noise + runs + 1, self.noise + runs + 2
    return features_lib.ExampleLengths(inputs, targets, inputs + targets)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1
    tokens_BN = np.asarray(tokens_BN1)[:, :self.n].astype(np.int64)
    return sentinel_example(tokens_BN, self.mask(draws), ids, self.lengths())
