"""Feature converters: an objective's text-to-text examples -> the Batch an architecture reads.

An example (research/objectives) is a dict of int32 numpy arrays, one row per example:
  inputs, inputs_segment_ids     [B, I]  what the model is given (the encoder's input, or a
                                         decoder-only model's prefix); segment ids > 0 on real
                                         tokens, 0 on the right padding
  targets, targets_segment_ids   [B, L]  what the model must produce
  targets_weights (optional)     [B, L]  float32 loss weight per target (default 1 on real ones)
Rows are right-padded; the converters read each row's real lengths from the segment ids.

As seqio's feature converters (Raffel et al. 2020; t5x), one per family of architectures:
  decoder_only     one sequence inputs ++ targets, each position predicting the next token; the
                   loss on the targets (every token with loss_on_inputs); prefix_mask marks the
                   inputs, over which a prefix LM attends bidirectionally (seqio's "inputs and
                   one position more" counts its BOS position; with no BOS, that is the inputs)
  encoder_decoder  the inputs to the encoder; the decoder reads the targets shifted right behind
                   a start token (the tokenizer's end-of-text) and predicts them
  encoder_only     inputs and targets aligned token by token (BERT-style MLM): the loss at each
                   position by the targets' weights
`ExampleLengths` are an objective's largest inputs, targets and inputs + targets; each converter
turns them into the model's sequence lengths (research/data/batch.py's `lengths`).
"""

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from research.data import batch as batch_lib
from research.errors import ConfigError


class PromptLayout(NamedTuple):
  """How a batch of prompts enters cached decoding (research/model/decode.py)."""
  batch: dict  # the first call's Batch: only the tokens it writes (numpy), research/model/archs.py
  last: np.ndarray  # [B] the index, among those tokens, whose logits predict the first new token
  next_positions: np.ndarray  # [B] the position the first generated token is read at
  memory_length: Optional[int]  # encoder tokens whose cross-attention keys are cached, or None
  max_position: int  # the largest position the first call uses (a learned table must hold it)


def _padded_prompts(prompts, length: int):
  """[B, length] int32 right-padded prompts and their [B, length] segment ids (1 real, 0 pad)."""
  if not prompts or min(len(p) for p in prompts) < 1 or max(len(p) for p in prompts) > length:
    raise ValueError(f'prompts must be 1 to {length} tokens long')
  tokens_BP = np.zeros((len(prompts), length), np.int32)
  for b, p in enumerate(prompts):
    tokens_BP[b, :len(p)] = p
  seg_BP = (np.arange(length)[None] < np.array([len(p) for p in prompts])[:, None])
  return tokens_BP, seg_BP.astype(np.int32)


class ExampleLengths(NamedTuple):
  inputs: int  # the longest inputs of any example
  targets: int  # the longest targets
  total: int  # the longest inputs + targets of one example (<= inputs + targets)


def _real_lengths(segment_ids_BX: np.ndarray) -> np.ndarray:
  return (segment_ids_BX > 0).sum(axis=1)


def _weights(example) -> np.ndarray:
  seg = example['targets_segment_ids']
  weights = example.get('targets_weights')
  real = (seg > 0).astype(np.float32)
  return real if weights is None else np.asarray(weights, np.float32) * real


def _pad_to(x_BX: np.ndarray, length: int, what: str) -> np.ndarray:
  if x_BX.shape[1] > length:
    raise ValueError(f'{what} of length {x_BX.shape[1]} exceed the declared {length}')
  return np.pad(x_BX, ((0, 0), (0, length - x_BX.shape[1])))


@dataclasses.dataclass(frozen=True)
class DecoderOnly:
  """inputs ++ targets as one causal (or prefix) sequence of length total - 1."""
  prefix: bool = False  # emit prefix_mask (model.arch=prefix_lm)
  loss_on_inputs: bool = False  # objective.loss_on=all

  def model_lengths(self, lengths: ExampleLengths) -> dict:
    return {'length': lengths.total - 1}

  def max_prompt_length(self, model_lengths: dict) -> int:
    return model_lengths['length']

  def generation_lengths(self, model_lengths: dict, prompt_length: int) -> ExampleLengths:
    """A prompt of prompt_length inputs and targets filling the model's sequence."""
    total = model_lengths['length'] + 1
    return ExampleLengths(prompt_length, total - prompt_length, total)

  def target_offsets(self, example) -> np.ndarray:
    """[B] the position whose prediction is each row's first target."""
    return _real_lengths(example['inputs_segment_ids']) - 1

  def prompt_layout(self, prompts, length: int) -> PromptLayout:
    """Cached decoding's first call: each prompt (a list of ids) right-padded to `length`, the
    whole of it a prefix LM's bidirectional prefix (the inputs, as in training)."""
    tokens_BP, seg_BP = _padded_prompts(prompts, length)
    n_B = seg_BP.sum(axis=1)
    batch = {'inputs': tokens_BP, 'segment_ids': seg_BP,
             'positions': batch_lib.positions_from_segments(seg_BP)}
    if self.prefix:
      batch['prefix_mask'] = seg_BP.copy()
    return PromptLayout(batch, last=n_B - 1, next_positions=n_B, memory_length=None,
                        max_position=int(n_B.max()) - 1)

  def __call__(self, example, lengths: ExampleLengths) -> dict:
    inputs_BI, targets_BL = example['inputs'], example['targets']
    b, i = inputs_BI.shape
    n_in_B1 = _real_lengths(example['inputs_segment_ids'])[:, None]
    n_tg_B1 = _real_lengths(example['targets_segment_ids'])[:, None]
    j_1S = np.arange(lengths.total)[None]
    rows_B1 = np.arange(b)[:, None]
    from_in_BS = j_1S < n_in_B1
    tg_index_BS = np.clip(j_1S - n_in_B1, 0, max(targets_BL.shape[1] - 1, 0))
    from_tg_BS = ~from_in_BS & (j_1S - n_in_B1 < n_tg_B1)
    in_index_BS = np.clip(j_1S, 0, max(i - 1, 0))

    def join(a_BI, a_BL, fill=0):
      out = np.where(from_in_BS, a_BI[rows_B1, in_index_BS] if i else fill,
                     np.where(from_tg_BS, a_BL[rows_B1, tg_index_BS], fill))
      return out

    seq_BS = join(inputs_BI, targets_BL).astype(np.int32)
    seg_BS = join(example['inputs_segment_ids'], example['targets_segment_ids']).astype(np.int32)
    if self.loss_on_inputs:
      weight_BS = (seg_BS > 0).astype(np.float32)
    else:
      weight_BS = np.where(from_tg_BS, _weights(example)[rows_B1, tg_index_BS], 0.0)
    segment_ids_BT = np.ascontiguousarray(seg_BS[:, :-1])
    out = {
        'inputs': np.ascontiguousarray(seq_BS[:, :-1]),
        'targets': np.ascontiguousarray(seq_BS[:, 1:]),
        # The weight of the token each position predicts, and only where that token is real.
        'loss_mask': np.ascontiguousarray(weight_BS[:, 1:] * (seg_BS[:, 1:] > 0), np.float32),
        'segment_ids': segment_ids_BT,
        'positions': batch_lib.positions_from_segments(segment_ids_BT),
    }
    if self.prefix:
      out['prefix_mask'] = np.ascontiguousarray(from_in_BS[:, :-1], np.int32)
    return out


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
  """inputs -> the encoder; targets shifted right behind bos_id -> the decoder."""
  bos_id: int

  def model_lengths(self, lengths: ExampleLengths) -> dict:
    return {'length': lengths.targets, 'encoder_length': lengths.inputs}

  def max_prompt_length(self, model_lengths: dict) -> int:
    return model_lengths['encoder_length']

  def generation_lengths(self, model_lengths: dict, prompt_length: int) -> ExampleLengths:
    del prompt_length  # the encoder's input is padded to its length
    s, t = model_lengths['encoder_length'], model_lengths['length']
    return ExampleLengths(s, t, s + t)

  def target_offsets(self, example) -> np.ndarray:
    return np.zeros(len(example['targets']), np.int64)

  def prompt_layout(self, prompts, length: int) -> PromptLayout:
    """Cached decoding's first call: the prompts, right-padded to `length`, to the encoder; the
    decoder's start token (bos_id) at position 0."""
    tokens_BP, seg_BP = _padded_prompts(prompts, length)
    b = len(prompts)
    ones_B1 = np.ones((b, 1), np.int32)
    batch = {'inputs': ones_B1 * self.bos_id, 'segment_ids': ones_B1,
             'positions': np.zeros((b, 1), np.int32), 'encoder_inputs': tokens_BP,
             'encoder_segment_ids': seg_BP,
             'encoder_positions': batch_lib.positions_from_segments(seg_BP)}
    return PromptLayout(batch, last=np.zeros(b, np.int64), next_positions=np.ones(b, np.int64),
                        memory_length=length, max_position=int(seg_BP.sum(axis=1).max()) - 1)

  def __call__(self, example, lengths: ExampleLengths) -> dict:
    enc_seg_BS = _pad_to(example['inputs_segment_ids'], lengths.inputs, 'inputs').astype(np.int32)
    targets_BT = _pad_to(example['targets'], lengths.targets, 'targets').astype(np.int32)
    seg_BT = _pad_to(example['targets_segment_ids'], lengths.targets, 'targets').astype(np.int32)
    weights_BT = _pad_to(_weights(example), lengths.targets, 'targets')
    inputs_BT = np.empty_like(targets_BT)
    inputs_BT[:, 0] = self.bos_id
    inputs_BT[:, 1:] = targets_BT[:, :-1]
    inputs_BT = np.where(seg_BT > 0, inputs_BT, 0).astype(np.int32)
    return {
        'inputs': inputs_BT, 'targets': targets_BT,
        'loss_mask': weights_BT.astype(np.float32), 'segment_ids': seg_BT,
        'positions': batch_lib.positions_from_segments(seg_BT),
        'encoder_inputs': _pad_to(example['inputs'], lengths.inputs, 'inputs').astype(np.int32),
        'encoder_segment_ids': enc_seg_BS,
        'encoder_positions': batch_lib.positions_from_segments(enc_seg_BS),
    }


@dataclasses.dataclass(frozen=True)
class EncoderOnly:
  """inputs and targets aligned position by position (BERT-style masked LM)."""

  def model_lengths(self, lengths: ExampleLengths) -> dict:
    return {'length': lengths.inputs}

  def _cannot_generate(self, *args):
    del args
    raise ConfigError('model.arch=encoder predicts masked tokens in place; it cannot generate '
                      'text (set sample.num_samples=0)')

  max_prompt_length = generation_lengths = target_offsets = prompt_layout = _cannot_generate

  def __call__(self, example, lengths: ExampleLengths) -> dict:
    seg_BT = example['inputs_segment_ids']
    if (example['inputs'].shape != example['targets'].shape
        or not np.array_equal(seg_BT, example['targets_segment_ids'])):
      raise ConfigError('model.arch=encoder needs inputs and targets aligned token by token '
                        '(objective.name=bert_mlm); this objective rewrites the sequence')
    seg_BT = _pad_to(seg_BT, lengths.inputs, 'inputs').astype(np.int32)
    return {
        'inputs': _pad_to(example['inputs'], lengths.inputs, 'inputs').astype(np.int32),
        'targets': _pad_to(example['targets'], lengths.inputs, 'targets').astype(np.int32),
        'loss_mask': _pad_to(_weights(example), lengths.inputs, 'targets').astype(np.float32),
        'segment_ids': seg_BT,
        'positions': batch_lib.positions_from_segments(seg_BT),
    }

