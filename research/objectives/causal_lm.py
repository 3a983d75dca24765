"""Next-token prediction over the whole packed row (GPT; BigScience's "full language modelling").

As a text-to-text example: the row's first token is the input and the rest are the targets, so
the decoder-only converter predicts every token after the first, as a language model does, with
the loader's document segments kept (attention stays inside each packed document).
"""

import numpy as np

from research.data import features as features_lib
from research.objectives import Objective


def lm_lengths(n: int):
  return features_lib.ExampleLengths(inputs=1, targets=n, total=n + 1)


def lm_example(tokens_BN1, segment_ids_BN1) -> dict:
  """Rows of n + 1 tokens as the example: the first token the input, the rest the targets."""
  tokens_BN1 = np.asarray(tokens_BN1, np.int32)
  segment_ids_BN1 = np.asarray(segment_ids_BN1, np.int32)
  return {'inputs': tokens_BN1[:, :1], 'inputs_segment_ids': segment_ids_BN1[:, :1],
          'targets': tokens_BN1[:, 1:], 'targets_segment_ids': segment_ids_BN1[:, 1:]}


class CausalLM(Objective):
  NEEDS_SPECIAL_TOKENS = False
  INPUTS_END_WITH_EOS = False  # a language model reads text straight on

  def check(self) -> None:
    pass  # any row length: a row is seq_len + 1 tokens

  def lengths(self):
    return lm_lengths(self.n)

  def __call__(self, tokens_BN1, segment_ids_BN1, draws, ids) -> dict:
    del draws, ids
    return lm_example(tokens_BN1, segment_ids_BN1)


def causal_lm_batch(rows: dict) -> dict:
  """Loader rows {'tokens', 'segment_ids'} (B, T+1) -> the decoder's Batch, each (B, T): inputs,
  targets, segment_ids, positions (int32) and loss_mask (float32). Every target counts, the next
  document's eot included: predicting it teaches the model where documents end."""
  lengths = lm_lengths(rows['tokens'].shape[1] - 1)
  return features_lib.DecoderOnly()(lm_example(rows['tokens'], rows['segment_ids']), lengths)
