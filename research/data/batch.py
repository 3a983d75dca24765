"""The Batch: one flat dict of numpy arrays that objectives produce and models consume.

Every key is declared here once, with its dtype and the sequence it runs along; each
architecture names the keys it reads (`BATCH_KEYS` of the classes in research/model/archs.py)
and the feature converters (research/data/features.py) produce exactly those. The model, the
ahead-of-time compiler (launch/compile.py) and the tests build their shapes from `spec`.

Two sequences: the main one, which every architecture has (a decoder's, or an encoder-only
model's), of length `lengths['length']`, and for encoder-decoder models the encoder's, of
length `lengths['encoder_length']`.
"""

import numpy as np

# key -> (dtype, sequence, meaning)
FIELDS = {
    'inputs': (np.int32, 'length', 'token ids the model reads'),
    'targets': (np.int32, 'length', 'the token id each position predicts'),
    'loss_mask': (np.float32, 'length', '1.0 where the target counts in the loss, else 0.0'),
    'segment_ids': (np.int32, 'length', 'document / example of each token, from 1; 0 is padding, '
                    'which attends nothing and is attended by nothing'),
    'positions': (np.int32, 'length', "each token's position in its document, from 0"),
    'prefix_mask': (np.int32, 'length', '1 on the bidirectional prefix (the inputs of a prefix '
                    'LM), 0 on the causal part'),
    'encoder_inputs': (np.int32, 'encoder_length', 'token ids the encoder reads'),
    'encoder_segment_ids': (np.int32, 'encoder_length', "the encoder's segment ids (0 padding)"),
    'encoder_positions': (np.int32, 'encoder_length', "the encoder's positions"),
}

SEQUENCES = ('length', 'encoder_length')


def spec(keys, batch_size: int, lengths: dict) -> dict:
  """{key: (shape, dtype)} of a Batch with these keys."""
  out = {}
  for key in keys:
    dtype, seq, _ = FIELDS[key]
    out[key] = ((batch_size, lengths[seq]), dtype)
  return out


def dummy(keys, batch_size: int, lengths: dict) -> dict:
  """A Batch of zeros with every token real (segment ids 1), e.g. to initialize a model."""
  out = {}
  for key, (shape, dtype) in spec(keys, batch_size, lengths).items():
    fill = 1 if key.endswith('segment_ids') else 0
    out[key] = np.full(shape, fill, dtype)
  return out


def check(batch: dict, keys, lengths: dict | None = None) -> None:
  """Raises ValueError when batch does not hold exactly `keys` with the declared dtypes (and, given
  lengths, shapes): a converter and an architecture that disagree fail here, not in XLA."""
  if set(batch) != set(keys):
    raise ValueError(f'batch keys {sorted(batch)} differ from {sorted(keys)}')
  for key, value in batch.items():
    dtype, seq, _ = FIELDS[key]
    if value.dtype != dtype:
      raise ValueError(f'batch[{key!r}] is {value.dtype}, not {np.dtype(dtype)}')
    if lengths is not None and value.shape[1] != lengths[seq]:
      raise ValueError(f'batch[{key!r}] has length {value.shape[1]}, not {lengths[seq]}')


def positions_from_segments(segment_ids_BT: np.ndarray) -> np.ndarray:
  """Each token's distance from the start of its segment; starts are the row start and every
  change of id. Padding (id 0) gets 0 wherever it begins a run of padding."""
  batch, length = segment_ids_BT.shape
  index_BT = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  is_start_BT = np.ones((batch, length), bool)
  is_start_BT[:, 1:] = segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]
  start_BT = np.maximum.accumulate(np.where(is_start_BT, index_BT, 0), axis=1)
  positions_BT = (index_BT - start_BT).astype(np.int32)
  return np.where(segment_ids_BT > 0, positions_BT, 0).astype(np.int32)
