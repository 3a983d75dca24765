"""Tokenized corpora cached on disk, one directory per (corpus, tokenizer), memory-mapped on use."""

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile

import numpy as np

from research.data.sources import Corpus
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


def cached_streams(corpus: Corpus, tokenizer: Tokenizer, cache_dir: str) -> dict[str, TokenStream]:
  """{'train', 'eval'} token streams, tokenizing into <cache_dir>/tokens/<key>/ the first time."""
  final_dir = os.path.join(cache_dir, 'tokens', _key(corpus, tokenizer))
  if not os.path.exists(os.path.join(final_dir, 'meta.json')):
    _write(corpus, tokenizer, final_dir)
  with open(os.path.join(final_dir, 'meta.json'), encoding='utf-8') as f:
    meta = json.load(f)
  return {split: TokenStream(
      tokens=np.load(os.path.join(final_dir, f'{split}.tokens.npy'), mmap_mode='r'),
      doc_starts=np.load(os.path.join(final_dir, f'{split}.doc_starts.npy'), mmap_mode='r'),
      num_bytes=meta[split]['num_bytes']) for split in _SPLITS}
