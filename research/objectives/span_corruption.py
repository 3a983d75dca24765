"""T5's span corruption (Raffel et al. 2020, section 3.3.4), as its code computes it.

The noise mask (t5/data/preprocessors.py `random_spans_noise_mask`): num_noise = round(L *
density) computed in float32 (T5's TensorFlow; halves to even), clipped to [1, L - 1];
num_spans = max(1, round(num_noise / mean_span)); the noise and non-noise tokens each split into
num_spans spans by a uniform random composition; spans interleave non-noise, noise, non-noise,
..., so the mask starts with non-noise and ends with noise. Each noise span becomes one sentinel
in the inputs; the targets list each sentinel followed by its span; both end with end-of-text:

  tokens  The cat sat on the mat .      (noise: "cat", "on the")
  inputs  The <s0> sat <s1> mat . EOS
  targets <s0> cat <s1> on the EOS

Sentinels are distinct special ids counted down from the top of the vocabulary, as T5's
<extra_id_0> = vocab - 1 (research/data/tokenizers.py). With a fixed row length every example
has the same inputs and targets lengths (`span_corruption_lengths`).
"""

import numpy as np

from research.data import features as features_lib
from research.errors import ConfigError
from research.objectives import (Objective, compact, example, float32_round,
                                 num_noise_tokens)


def num_noise_spans(num_noise: int, mean_span_length: float) -> int:
  return max(1, float32_round(np.float32(num_noise) / np.float32(mean_span_length)))


def _segmentation(num_items: int, num_segments: int, u_BX: np.ndarray) -> np.ndarray:
  """[B, num_segments] lengths summing to num_items, each >= 1, a uniform random composition:
  the segment boundaries are the num_segments - 1 slots (of num_items - 1) with the smallest u."""
  b = len(u_BX)
  if num_segments == 1:
    return np.full((b, 1), num_items, np.int64)
  cuts_BK = np.sort(np.argpartition(u_BX, num_segments - 2, axis=1)[:, :num_segments - 1],
                    axis=1) + 1
  edges_BK = np.concatenate([np.zeros((b, 1), np.int64), cuts_BK,
                             np.full((b, 1), num_items, np.int64)], axis=1)
  return np.diff(edges_BK, axis=1)


def noise_masks(length: int, noise_density: float, mean_noise_span_length: float,
                random) -> np.ndarray:
  """[B, length] bool noise masks, T5's semantics; random(*shape) gives [B, *shape] uniforms."""
  orig_length, length = length, max(length, 2)
  noise = num_noise_tokens(length, noise_density)
  spans = num_noise_spans(noise, mean_noise_span_length)
  noise_lengths_BK = _segmentation(noise, spans, random(max(noise - 1, 0)))
  nonnoise_lengths_BK = _segmentation(length - noise, spans, random(max(length - noise - 1, 0)))
  b = len(noise_lengths_BK)
  interleaved_BK2 = np.stack([nonnoise_lengths_BK, noise_lengths_BK], axis=2).reshape(b, -1)
  starts_BK = np.cumsum(interleaved_BK2, axis=1)[:, :-1]
  indicator_BL = np.zeros((b, length), np.int64)
  indicator_BL[np.arange(b)[:, None], starts_BK] = 1
  return (np.cumsum(indicator_BL, axis=1) % 2 == 1)[:, :orig_length]


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            seed: int) -> np.ndarray:
  """One [length] bool noise mask from a seed (T5's function of that name)."""
  rng = np.random.default_rng(seed)
  return noise_masks(length, noise_density, mean_noise_span_length,
                     lambda *shape: rng.random((1, *shape)))[0]


def span_corruption_lengths(tokens_length: int, noise_density: float,
                            mean_noise_span_length: float) -> tuple:
  """(inputs, targets) lengths of span corruption on rows of tokens_length, end-of-text
  included, as the noise mask makes them (float32 rounding)."""
  noise = num_noise_tokens(tokens_length, noise_density)
  spans = num_noise_spans(noise, mean_noise_span_length)
  return tokens_length - noise + spans + 1, noise + spans + 1


def random_spans_helper(inputs_length: int, noise_density: float,
                        mean_noise_span_length: float, extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple:
  """T5's helper: (raw tokens_length, targets_length) whose span-corrupted inputs fill
  inputs_length. 512 inputs at density 0.15, mean span 3 -> 568 raw tokens and 114 targets.
  Like T5's, it rounds in float64 (the mask rounds in float32; the two agree at these sizes)."""
  def lengths(tokens_length):
    noise = int(round(tokens_length * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    return (tokens_length - noise + spans * extra_tokens_per_span_inputs + 1,
            noise + spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  # T5's own adjustment, so that at density 0.5 the targets are not longer than the inputs.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def spans_to_sentinels(tokens_BN, mask_BN, ids, length: int):
  """Each run of masked tokens replaced by one sentinel (the k-th run by sentinel k), then
  end-of-text, right-padded to `length`: ([B, length] ids, [B, length] bool real)."""
  first_BN = mask_BN & ~np.pad(mask_BN[:, :-1], ((0, 0), (1, 0)))
  index_BN = np.cumsum(first_BN, axis=1) - 1
  out_BN = np.where(first_BN, ids.sentinels(index_BN), tokens_BN)
  return compact(out_BN, ~mask_BN | first_BN, length, ids.eos)


def check_noise(n: int, density: float, mean: float, what: str) -> None:
  """ConfigError unless span corruption at (density, mean) can cut rows of n tokens."""
  if not 0.0 < density < 1.0:
    raise ConfigError(f'{what}: the noise density {density!r} must be in (0, 1)')
  if not mean >= 1.0:
    raise ConfigError(f'{what}: the mean span length {mean!r} must be at least 1')
  noise = num_noise_tokens(n, density)
  if num_noise_spans(noise, mean) > max(n, 2) - noise:
    raise ConfigError(f'{what}: at data.seq_len={n}, {num_noise_spans(noise, mean)} noise spans '
                      f'need as many uncorrupted tokens between them, and only {n - noise} are '
                      'left (a longer span length or a lower density fits)')


def sentinel_example(tokens_BN, noise_BN, ids, lengths):
  """The example of rows whose noise runs become sentinels: the inputs keep the rest, each run
  replaced by sentinel k (the k-th run); the targets list sentinel k before run k, and a row that
  ends with uncorrupted tokens ends its targets with one more sentinel (the paper's Fig. 2; T5's
  span masks always end with noise, so there it never appears)."""
  inputs = spans_to_sentinels(tokens_BN, noise_BN, ids, lengths.inputs)
  # The targets: the runs of the complement become the sentinels. One uncorrupted token put in
  # front makes the complement start every row, so sentinel k always precedes noise run k.
  lead_tokens_BN = np.pad(tokens_BN, ((0, 0), (1, 0)))
  lead_noise_BN = np.pad(noise_BN, ((0, 0), (1, 0)))
  targets = spans_to_sentinels(lead_tokens_BN, ~lead_noise_BN, ids, lengths.targets)
  return example(*inputs, *targets)


def corrupt(tokens_BN, draws, ids, *, density: float, mean: float, lengths, prepend=None):
  """Span corruption of rows tokens_BN as an example padded to `lengths` (its inputs and
  targets); `prepend`: a token put first in the inputs (UL2's paradigm token)."""
  noise_BN = noise_masks(tokens_BN.shape[1], density, mean, draws.random)
  if prepend is not None:
    tokens_BN = np.concatenate([np.full((len(tokens_BN), 1), prepend), tokens_BN], axis=1)
    noise_BN = np.pad(noise_BN, ((0, 0), (1, 0)))
  return sentinel_example(tokens_BN, noise_BN, ids, lengths)


class SpanCorruption(Objective):
  """objective.name=span_corruption: T5's baseline objective, at objective.noise_density
  (0.15) and objective.mean_span_length (3)."""

  def check(self) -> None:
    super().check()
    o = self.o
    if not 0.0 < o.noise_density < 1.0:
      raise ConfigError(f'objective.noise_density={o.noise_density!r}: must be in (0, 1)')
    if not o.mean_span_length >= 1.0:
      raise ConfigError(f'objective.mean_span_length={o.mean_span_length!r}: must be at least 1')
    check_noise(self.n, o.noise_density, o.mean_span_length, 'objective.name=span_corruption')

  def extra_ids(self) -> int:
    return num_noise_spans(num_noise_tokens(self.n, self.o.noise_density),
                           self.o.mean_span_length)

  def lengths(self):
    inputs, targets = span_corruption_lengths(self.n, self.o.noise_density,
                                              self.o.mean_span_length)
    return features_lib.ExampleLengths(inputs, targets, inputs + targets)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del segment_ids_BN1  # one example per row, across its documents (T5 concatenates them)
    return corrupt(np.asarray(tokens_BN1)[:, :self.n], draws, ids,
                   density=self.o.noise_density, mean=self.o.mean_span_length,
                   lengths=self.lengths())
