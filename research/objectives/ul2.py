"""UL2's mixture of denoisers (Tay et al. 2022): every row gets one of seven denoisers, drawn by
objective.ul2_rates (relative weights; uniform by default, as the paper's appendix code):

  R (regular):  span corruption, mean span 3 at rate 0.15; mean 8 at 0.15       [NLU]
  X (extreme):  mean 3 at 0.5; 8 at 0.5; 64 at 0.15; 64 at 0.5                 [NLG]
  S (sequential): prefix LM, the split uniform in [1, n - 1]                   [S2S]

The paradigm token of the row's denoiser opens its inputs (objective.ul2_paradigm_tokens; U-PaLM
section 2.3 gives R -> [NLU], X -> [NLG], S -> [S2S]). Examples are padded to the longest inputs
and targets any denoiser makes at this row length.
"""

import numpy as np

from research.data import features as features_lib
from research.errors import ConfigError
from research.objectives import Objective, num_noise_tokens
from research.objectives import prefix_lm, span_corruption

# (name, paradigm token, mean span length, noise density); None: the S-denoiser (prefix LM).
DENOISERS = (
    ('R1', '[NLU]', 3.0, 0.15), ('R2', '[NLU]', 8.0, 0.15),
    ('X1', '[NLG]', 3.0, 0.5), ('X2', '[NLG]', 8.0, 0.5),
    ('X3', '[NLG]', 64.0, 0.15), ('X4', '[NLG]', 64.0, 0.5),
    ('S', '[S2S]', None, None),
)


class UL2(Objective):

  def check(self) -> None:
    super().check()
    rates = tuple(self.o.ul2_rates)
    if len(rates) != len(DENOISERS) or any(not r >= 0 for r in rates) or not sum(rates) > 0:
      raise ConfigError(f'objective.ul2_rates={rates!r}: want {len(DENOISERS)} non-negative '
                        f'weights, not all 0, for {", ".join(d[0] for d in DENOISERS)}')
    for name, _, mean, density in DENOISERS:
      if mean is not None:
        span_corruption.check_noise(self.n, density, mean, f'objective.name=ul2 ({name})')

  @property
  def lead(self) -> int:
    return 1 if self.o.ul2_paradigm_tokens else 0

  def _span_lengths(self, mean, density):
    inputs, targets = span_corruption.span_corruption_lengths(self.n, density, mean)
    return inputs + self.lead, targets

  def extra_ids(self) -> int:
    return max(span_corruption.num_noise_spans(num_noise_tokens(self.n, density), mean)
               for _, _, mean, density in DENOISERS if mean is not None)

  def lengths(self):
    sizes = [self._span_lengths(mean, density) if mean is not None
             else (self.n + self.lead, self.n) for _, _, mean, density in DENOISERS]
    inputs = max(i for i, _ in sizes)
    targets = max(t for _, t in sizes)
    return features_lib.ExampleLengths(inputs, targets, max(i + t for i, t in sizes))

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1
    tokens_BN = np.asarray(tokens_BN1)[:, :self.n].astype(np.int64)
    b = len(tokens_BN)
    rates = np.asarray(self.o.ul2_rates, np.float64)
    # Row r's denoiser: the first whose cumulative share exceeds u_r.
    which_B = np.searchsorted(np.cumsum(rates / rates.sum()), draws.random(1)[:, 0], side='right')
    which_B = np.minimum(which_B, len(DENOISERS) - 1)
    lengths = self.lengths()
    out = {'inputs': np.zeros((b, lengths.inputs), np.int32),
           'inputs_segment_ids': np.zeros((b, lengths.inputs), np.int32),
           'targets': np.zeros((b, lengths.targets), np.int32),
           'targets_segment_ids': np.zeros((b, lengths.targets), np.int32)}
    for d, (_, paradigm, mean, density) in enumerate(DENOISERS):
      # Every denoiser draws for every row, in a fixed order, so that the draws do not depend on
      # which rows this process holds; each row keeps its own denoiser's.
      token = ids.paradigm[paradigm] if self.lead else None
      if mean is None:
        split_B = draws.integers(1, self.n)
        ex = prefix_lm.split_at(tokens_BN, split_B, ids.eos, extra_first=token)
      else:
        ex = span_corruption.corrupt(tokens_BN, draws, ids, density=density, mean=mean,
                                     lengths=lengths, prepend=token)
      rows = which_B == d
      for key, value in ex.items():
        out[key][rows, :value.shape[1]] = value[rows]
    return out
