"""Next-token prediction: packed loader rows -> the batch every model consumes."""

import numpy as np


def causal_lm_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Loader rows {'tokens', 'segment_ids'} (B, T+1) -> the model's batch, each (B, T).

  Keys: inputs, targets, segment_ids, positions (int32) and loss_mask (float32). Every target
  counts, the next document's eot included: predicting it teaches the model where documents end.
  """
  tokens_BT1 = np.asarray(rows['tokens'], np.int32)
  segment_ids_BT = np.asarray(rows['segment_ids'][:, :-1], np.int32)
  batch, length = segment_ids_BT.shape
  # Position = distance from the latest segment start; starts are the row start and id changes.
  index_BT = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  is_start_BT = np.ones((batch, length), bool)
  is_start_BT[:, 1:] = segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]
  start_BT = np.maximum.accumulate(np.where(is_start_BT, index_BT, 0), axis=1)
  return {
      'inputs': np.ascontiguousarray(tokens_BT1[:, :-1]),
      'targets': np.ascontiguousarray(tokens_BT1[:, 1:]),
      'segment_ids': segment_ids_BT,
      'positions': (index_BT - start_BT).astype(np.int32),
      'loss_mask': np.ones((batch, length), np.float32),
  }
