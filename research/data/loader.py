"""Packing a token stream into rows, and a deterministic, resumable, multi-host batch loader.

A row is seq_len + 1 consecutive tokens starting at a multiple of seq_len, so consecutive rows
share one token and every token after the first is a target exactly once per epoch. Rows cut
across documents; segment ids say which document each token belongs to.
"""

import numpy as np

from research.data.cache import TokenStream
from research.errors import ConfigError


def _rows(stream: TokenStream, doc_starts: np.ndarray, rows_R: np.ndarray, seq_len: int,
          document_mask: bool) -> dict[str, np.ndarray]:
  """Rows `rows_R` of the stream as {'tokens', 'segment_ids'}, each int32 (R, seq_len + 1)."""
  pos_RT = rows_R[:, None].astype(np.int64) * seq_len + np.arange(seq_len + 1)
  tokens_RT = np.asarray(stream.tokens[pos_RT], np.int32)
  if document_mask:
    # Each document starts with its eot token, so the document index of a position changes exactly
    # there; renumbering from the row's first document makes ids start at 1 in every row.
    doc_RT = np.searchsorted(doc_starts, pos_RT, side='right')
    segment_ids_RT = (doc_RT - doc_RT[:, :1] + 1).astype(np.int32)
  else:
    segment_ids_RT = np.ones_like(tokens_RT)
  return {'tokens': tokens_RT, 'segment_ids': segment_ids_RT}


def _num_rows(stream: TokenStream, seq_len: int) -> int:
  return max(0, (len(stream.tokens) - 1) // seq_len)


class Loader:
  """Batch `step` is a pure function of (seed, step): resuming needs only the step."""

  def __init__(self, stream: TokenStream, *, seq_len: int, batch_size: int, seed: int,
               document_mask: bool = True):
    self.stream = stream
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.seed = seed
    self.document_mask = document_mask
    self.num_rows = _num_rows(stream, seq_len)
    if self.num_rows < batch_size:
      raise ConfigError(f'corpus split has {len(stream.tokens)} tokens, too few for batch_size x '
                        f'(seq_len+1) = {batch_size} x {seq_len + 1}')
    self._doc_starts = np.asarray(stream.doc_starts)
    self._perms = {}  # epoch -> permutation; a memo, batches do not depend on call order

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:  # a batch spans at most two epochs
        del self._perms[min(self._perms)]
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return self._perms[epoch]

  def batch(self, step: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's contiguous slice of global batch `step`: int32 'tokens', 'segment_ids'."""
    if self.batch_size % process_count:
      raise ConfigError(f'train.batch_size={self.batch_size} is not divisible by the '
                        f'{process_count} processes')
    local = self.batch_size // process_count
    start = step * self.batch_size + process_index * local
    index_B = np.arange(start, start + local, dtype=np.int64)
    epoch_B, slot_B = np.divmod(index_B, self.num_rows)
    rows_B = np.empty(local, np.int64)
    for epoch in np.unique(epoch_B):
      here = epoch_B == epoch
      rows_B[here] = self._perm(int(epoch))[slot_B[here]]
    return _rows(self.stream, self._doc_starts, rows_B, self.seq_len, self.document_mask)


def eval_rows(stream: TokenStream, *, seq_len: int, max_rows: int,
              document_mask: bool = True) -> dict[str, np.ndarray]:
  """min(max_rows, available) rows spread evenly over the split (so the evaluation covers all of
  its documents, not the first few), in order, as `Loader.batch` returns them."""
  available = _num_rows(stream, seq_len)
  if available == 0:
    raise ConfigError(f'corpus split has {len(stream.tokens)} tokens, too few for one row of '
                      f'seq_len+1 = {seq_len + 1}')
  rows_R = np.unique(np.linspace(0, available - 1, min(max_rows, available)).round()).astype(
      np.int64)
  return _rows(stream, np.asarray(stream.doc_starts), rows_R, seq_len, document_mask)
