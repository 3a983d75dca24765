"""Held-out perplexity and bits per byte of a finished run at any evaluation length.

Two ways to cut the held-out stream into windows of L tokens (Press et al. 2022, ALiBi):
- non-overlapping: consecutive windows; every token is predicted once, with 0..L-1 tokens of
  context (early positions see little context);
- sliding, stride S < L: windows start every S tokens and only their last S predictions count
  (the first window counts all), so every token after the first L has at least L - S of context.
Beside them, the mean loss at each position of the non-overlapping windows: the curve that shows
where a scheme stops extrapolating.
"""

import functools
import json
import math
import os

import jax
import numpy as np

from research.data import cache, features, pipeline, sources, tokenizers
from research.errors import ConfigError
from research.model import positional
from research.objectives import causal_lm
from research.train import step as step_lib
from research.train.checkpoint import restore_run

RESULT = 'eval_lengths.json'
OPTIONS = ('lengths', 'stride', 'max_tokens')  # launch.evaluate's flags for evaluate_run


def load_run(workdir: str):
  """(resolved config, trainer, params, tokenizer, eval stream, step) of the run in workdir."""
  resolved, tr, params, step = restore_run(workdir)
  d = resolved.data
  if pipeline.task_class(resolved) is not pipeline.TextTask:
    raise ConfigError(f'--workdir={workdir}: a run on data.source={d.source}, which has no '
                      'held-out text to score at other lengths')
  corpus = sources.load_corpus(d.source, text_field=d.text_field, eval_fraction=d.eval_fraction)
  ranks = os.path.join(workdir, 'tokenizer.tiktoken')
  base = (tokenizers.load_tiktoken(ranks) if os.path.exists(ranks) else
          tokenizers.build_tokenizer(d.tokenizer, vocab_size=d.vocab_size, corpus=corpus,
                                     cache_dir=d.cache_dir))
  stream = cache.cached_streams(corpus, base, d.cache_dir)['eval']
  tok = tokenizers.with_special_tokens(base, d.extra_ids)
  return resolved, tr, params, tok, stream, step


def lm_batch(converter, rows: dict) -> dict:
  """Loader-style rows as the architecture's Batch of next-token prediction over each row."""
  return converter(causal_lm.lm_example(rows['tokens'], rows['segment_ids']),
                   causal_lm.lm_lengths(rows['tokens'].shape[1] - 1))


@functools.partial(jax.jit, static_argnames=('model',))
def _token_nll(model, params, batch):
  logits = step_lib.forward(model, params, batch)
  _, nll_BT = step_lib.token_losses(logits, batch['targets'])
  return nll_BT


def windows(stream, length: int, stride: int, max_windows: int, document_mask: bool):
  """Loader-style rows {'tokens', 'segment_ids'} [W, length+1] and each row's first scored index."""
  starts_W = np.arange(0, len(stream.tokens) - length, stride)[:max_windows]
  pos_WL = starts_W[:, None] + np.arange(length + 1)
  tokens_WL = np.asarray(stream.tokens[pos_WL], np.int32)
  if document_mask:  # as in training: ids restart at each document, numbered from 1 per row
    doc_WL = np.searchsorted(np.asarray(stream.doc_starts), pos_WL, side='right')
    segment_ids_WL = (doc_WL - doc_WL[:, :1] + 1).astype(np.int32)
  else:
    segment_ids_WL = np.ones_like(tokens_WL)
  first_W = np.where(starts_W == 0, 0, length - stride)
  return {'tokens': tokens_WL, 'segment_ids': segment_ids_WL}, first_W


def evaluate_length(model, params, stream, token_bytes_V, *, length, stride, batch_size,
                    max_tokens, document_mask, converter=features.DecoderOnly()):
  """Metrics of one (length, stride); stride == length is the non-overlapping evaluation."""
  max_windows = max(1, max_tokens // stride)
  rows, first_W = windows(stream, length, stride, max_windows, document_mask)
  if not len(first_W):
    raise ConfigError(f'the held-out split is too short for one window of {length} tokens')
  nll_sum = bytes_sum = count = 0.0
  per_pos_sum = np.zeros(length)
  per_pos_n = np.zeros(length)
  for i in range(0, len(first_W), batch_size):
    batch = lm_batch(converter, {k: v[i:i + batch_size] for k, v in rows.items()})
    nll_BT = np.asarray(_token_nll(model, params, batch), np.float64)
    scored_BT = np.arange(length)[None] >= first_W[i:i + batch_size, None]
    nll_sum += (nll_BT * scored_BT).sum()
    bytes_sum += (token_bytes_V[batch['targets']] * scored_BT).sum()
    count += scored_BT.sum()
    per_pos_sum += nll_BT.sum(0)
    per_pos_n += len(nll_BT)
  loss = nll_sum / count
  return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
          'bits_per_byte': nll_sum / bytes_sum / math.log(2), 'tokens': int(count),
          'windows': len(first_W), 'per_position_loss': (per_pos_sum / per_pos_n).tolist()}


def parse_lengths(spec: str, train_len: int) -> list:
  """'1x,1.5x,2x,512' -> token lengths; 'Nx' is N times the training length."""
  out = []
  for part in filter(None, (p.strip() for p in spec.split(','))):
    try:
      n = round(float(part[:-1]) * train_len) if part.endswith('x') else int(part)
    except ValueError:
      raise ConfigError(f'--lengths: {part!r} is neither a token count nor a multiple like 2x') from None
    if n < 2:
      raise ConfigError(f'--lengths: {part!r} gives {n} tokens; need at least 2')
    out.append(n)
  if not out:
    raise ConfigError('--lengths is empty')
  return out


def evaluate_run(workdir: str, *, lengths: str, stride: float, max_tokens: int,
                 batch_size: int = 0) -> dict:
  """Evaluates the run at each length, non-overlapping and (stride > 0) sliding; writes
  <workdir>/eval_lengths.json and returns its content."""
  resolved, tr, params, tok, stream, step = load_run(workdir)
  train_len = resolved.data.seq_len
  parsed = parse_lengths(lengths, train_len)
  # Before any compiling: past a learned table's rows the model reads NaN (research/model/
  # positional.py), so the perplexities would only say NaN.
  positional.check_learned_length(resolved.model, max(parsed), '--lengths')
  token_bytes_V = tok.token_byte_lengths().astype(np.float64)
  batch_size = batch_size or resolved.train.batch_size
  results = {'step': step, 'train_length': train_len, 'max_tokens': max_tokens, 'lengths': {}}
  for length in parsed:
    # Long windows: fewer rows per batch keeps memory near the training batch's.
    b = max(1, batch_size * train_len // length)
    common = dict(length=length, batch_size=b, max_tokens=max_tokens,
                  document_mask=resolved.data.document_mask,
                  converter=pipeline.converter(resolved, bos_id=tok.eot_id))
    entry = {'non_overlapping': evaluate_length(tr.model, params, stream, token_bytes_V,
                                                stride=length, **common)}
    if stride:
      s = max(1, round(stride * length)) if stride < 1 else int(stride)
      if s < length:
        sliding = evaluate_length(tr.model, params, stream, token_bytes_V, stride=s, **common)
        sliding.pop('per_position_loss')
        entry['sliding'] = dict(sliding, stride=s)
    results['lengths'][str(length)] = entry
  tmp = os.path.join(workdir, 'eval_lengths.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'eval_lengths.json'))
  return results


def format_result(out: dict) -> str:
  """The table launch.evaluate prints."""
  lines = [f'{"length":>8} {"ppl":>10} {"bits/byte":>10} {"sliding ppl":>12} {"sliding b/B":>12}']
  for length, e in out['lengths'].items():
    n, s = e['non_overlapping'], e.get('sliding')
    lines.append(f'{length:>8} {n["perplexity"]:>10.2f} {n["bits_per_byte"]:>10.3f} '
                 + (f'{s["perplexity"]:>12.2f} {s["bits_per_byte"]:>12.3f}' if s else ''))
  return '\n'.join(lines)
