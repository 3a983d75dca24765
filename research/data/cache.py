"""Tokenized corpora cached on disk, one directory per (corpus, tokenizer), memory-mapped on use."""

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile

import numpy as np
from absl import logging as absl_logging

from research.data.sources import Corpus
from research.errors import ConfigError
from research.data.tokenizers import Tokenizer

_FORMAT = 'tokens-v1'
_SPLITS = ('train', 'eval')
_CHUNK_DOCS = 1024  # documents per encode_batch call: parallel enough, bounded memory


@dataclasses.dataclass(frozen=True)
class TokenStream:
  """Documents as one token array, each as [eot] + its tokens, in corpus order."""
  tokens: np.ndarray
  doc_starts: np.ndarray
  num_bytes: int


def _token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 65536 else np.uint32


def _tokenize(docs: list[str], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
  dtype = _token_dtype(tokenizer.vocab_size)
  chunks, lengths = [], []
  for i in range(0, len(docs), _CHUNK_DOCS):
    ids = tokenizer.encode_batch(docs[i:i + _CHUNK_DOCS])
    lengths_D = np.array([len(x) + 1 for x in ids], np.int64)
    chunk = np.full(lengths_D.sum(), tokenizer.eot_id, dtype)
    is_text = np.ones(len(chunk), bool)
    is_text[np.cumsum(lengths_D) - lengths_D] = False
    chunk[is_text] = np.fromiter(itertools.chain.from_iterable(ids), dtype, count=is_text.sum())
    chunks.append(chunk)
    lengths.append(lengths_D)
  lengths_D = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
  tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
  num_bytes = sum(len(d.encode('utf-8')) for d in docs) + len(docs)
  return tokens, np.cumsum(lengths_D) - lengths_D, num_bytes


def _key(corpus: Corpus, tokenizer: Tokenizer) -> str:
  text = f'{_FORMAT}|{corpus.identity}|{tokenizer.identity}'
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write(corpus: Corpus, tokenizer: Tokenizer, final_dir: str) -> None:
  parent = os.path.dirname(final_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.tmp-')
  try:
    meta = {'format': _FORMAT, 'corpus': corpus.identity, 'tokenizer': tokenizer.identity,
            'tokenizer_name': tokenizer.name, 'vocab_size': tokenizer.vocab_size,
            'eot_id': tokenizer.eot_id, 'split': corpus.split}
    for split in _SPLITS:
      tokens, doc_starts, num_bytes = _tokenize(getattr(corpus, split), tokenizer)
      np.save(os.path.join(tmp, f'{split}.tokens.npy'), tokens)
      np.save(os.path.join(tmp, f'{split}.doc_starts.npy'), doc_starts)
      meta[split] = {'num_tokens': len(tokens), 'num_docs': len(doc_starts),
                     'num_bytes': num_bytes}
    with open(os.path.join(tmp, 'meta.json'), 'w', encoding='utf-8') as f:
      json.dump(meta, f, indent=1)
    try:
      os.replace(tmp, final_dir)  # atomic: readers see no cache or a whole one
    except OSError:
      if not os.path.exists(os.path.join(final_dir, 'meta.json')):
        raise
      # Another run finished the same cache first; its contents equal ours.
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def problem(final_dir: str, corpus: Corpus, tokenizer: Tokenizer):
  """Why the cache in final_dir is not the whole cache of (corpus, tokenizer), or None if it is.

  Checks what costs no pass over the tokens: meta.json names this corpus and tokenizer, and each
  array's header and file size match the counts meta.json recorded (a truncated or replaced file
  is caught; a same-size change inside one is not). The corpus's identity hashes its text, so an
  edited corpus file has another cache directory altogether."""
  try:
    with open(os.path.join(final_dir, 'meta.json'), encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    return f'meta.json: {e.strerror if isinstance(e, OSError) else "not valid JSON"}'
  if (meta.get('format'), meta.get('corpus'), meta.get('tokenizer')) != (
      _FORMAT, corpus.identity, tokenizer.identity):
    return 'meta.json names another corpus, tokenizer or format'
  dtype = np.dtype(_token_dtype(tokenizer.vocab_size))
  for split in _SPLITS:
    for name, count, want in ((f'{split}.tokens.npy', 'num_tokens', dtype),
                              (f'{split}.doc_starts.npy', 'num_docs', None)):
      path = os.path.join(final_dir, name)
      try:
        array = np.load(path, mmap_mode='r')
        size = os.path.getsize(path)
      except (OSError, ValueError) as e:  # missing, or shorter than its header says
        return f'{name}: {e.strerror if isinstance(e, OSError) and e.strerror else e}'
      expected = (meta.get(split) or {}).get(count)
      if array.shape != (expected,) or (want is not None and array.dtype != want):
        return f'{name} holds {array.shape} {array.dtype}, meta.json says {expected} {count}'
      if size != array.offset + array.nbytes:
        return f'{name} has {size} bytes, {array.offset + array.nbytes} expected'
  return None


def _discard(final_dir: str) -> None:
  """Moves a damaged cache out of the way, then deletes it (a reader's open maps stay valid)."""
  trash = f'{final_dir}.bad-{os.getpid()}'
  try:
    os.replace(final_dir, trash)
  except FileNotFoundError:  # another process discarded it first
    return
  shutil.rmtree(trash, ignore_errors=True)


def cached_streams(corpus: Corpus, tokenizer: Tokenizer, cache_dir: str) -> dict[str, TokenStream]:
  """{'train', 'eval'} token streams, tokenizing into <cache_dir>/tokens/<key>/ the first time.

  A cache that fails the checks of `problem` is rebuilt, with one warning line: it is derived
  from the corpus, so rebuilding loses nothing."""
  final_dir = os.path.join(cache_dir, 'tokens', _key(corpus, tokenizer))
  why = problem(final_dir, corpus, tokenizer) if os.path.exists(final_dir) else 'missing'
  if why is not None:
    if why != 'missing':
      absl_logging.warning('token cache %s is damaged (%s); rebuilding it', final_dir, why)
      _discard(final_dir)
    _write(corpus, tokenizer, final_dir)
    why = problem(final_dir, corpus, tokenizer)
    if why is not None:
      raise ConfigError(f'data.cache_dir={cache_dir}: the token cache {final_dir} reads back '
                        f'damaged right after it was written ({why})')
  with open(os.path.join(final_dir, 'meta.json'), encoding='utf-8') as f:
    meta = json.load(f)
  return {split: TokenStream(
      tokens=np.load(os.path.join(final_dir, f'{split}.tokens.npy'), mmap_mode='r'),
      doc_starts=np.load(os.path.join(final_dir, f'{split}.doc_starts.npy'), mmap_mode='r'),
      num_bytes=meta[split]['num_bytes']) for split in _SPLITS}
