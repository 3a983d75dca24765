"""Tokenizers: raw bytes, or byte-level BPE through tiktoken (trained here with rustbpe or loaded).

Every tokenizer has one end-of-text token, `eot_id`, that separates documents in token streams,
and an `identity` hash of everything that decides its encodings, for cache keys. Denoising
objectives add special tokens above the text vocabulary (`with_special_tokens`): a mask token,
UL2's paradigm tokens and T5's sentinels, the sentinels counted down from the top.
"""

import base64
import hashlib
import json
import os
import tempfile
from typing import Protocol

import numpy as np
import tiktoken

from research.data.sources import Corpus
from research.errors import ConfigError

EOT = '<|endoftext|>'

# Split patterns copied from tiktoken_ext.openai_public (tiktoken 0.14): GPT-2's (r50k_base) and
# GPT-4's (cl100k_base). Ranks files without a sidecar get one of these by their size.
R50K_PAT_STR = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)"""
                r"""|\s""")
CL100K_PAT_STR = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
                  r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
# Known OpenAI ranks files by size: (pattern, eot id). cl100k_base leaves id 100256 unused.
_KNOWN_RANKS = {50256: (R50K_PAT_STR, 50256), 100256: (CL100K_PAT_STR, 100257)}


class Tokenizer(Protocol):
  """What the data pipeline and the model need from a tokenizer."""
  name: str
  identity: str
  vocab_size: int
  eot_id: int
  sample_vocab_size: int  # ids below it may be sampled; the rest are special tokens or padding

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, no special tokens."""

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """`encode` over many texts, in parallel where possible."""

  def decode(self, ids) -> str:
    """Text of `ids`, skipping eot; invalid UTF-8 becomes U+FFFD."""

  def token_byte_lengths(self) -> np.ndarray:
    """int32 (vocab_size,): UTF-8 bytes each token stands for; eot stands for 1 separator."""


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255; eot is 256."""
  name = 'byte'
  identity = 'byte:v1'
  vocab_size = 257
  sample_vocab_size = 257
  eot_id = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids_N[ids_N < 256].astype(np.uint8).tobytes().decode('utf-8', errors='replace')

  def token_byte_lengths(self) -> np.ndarray:
    return np.ones(self.vocab_size, np.int32)


class TiktokenTokenizer:
  """Byte-level BPE: tiktoken over mergeable ranks, a split pattern and an eot token."""
  path: str | None = None  # the ranks file it was loaded from

  def __init__(self, name: str, mergeable_ranks: dict[bytes, int], pat_str: str,
               special_tokens: dict[str, int]):
    if EOT not in special_tokens:
      raise ConfigError(f'data.tokenizer={name}: no {EOT} among the special tokens')
    self.name = name
    self.eot_id = special_tokens[EOT]
    self.vocab_size = max(max(mergeable_ranks.values()), *special_tokens.values()) + 1
    self.sample_vocab_size = self.vocab_size
    self.encoding = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                      special_tokens=special_tokens)
    self._lengths = np.zeros(self.vocab_size, np.int32)
    self._lengths[list(mergeable_ranks.values())] = [len(t) for t in mergeable_ranks]
    self._lengths[self.eot_id] = 1
    h = hashlib.sha256()
    h.update(json.dumps({'pat_str': pat_str, 'special_tokens': special_tokens},
                        sort_keys=True).encode())
    for token, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1]):
      h.update(base64.b64encode(token) + b' %d\n' % rank)
    self.identity = f'tiktoken:{h.hexdigest()}'

  def encode(self, text: str) -> list[int]:
    return self.encoding.encode_ordinary(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 8)

  def decode(self, ids) -> str:
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    return self.encoding.decode(ids_N[ids_N != self.eot_id].tolist(), errors='replace')

  def token_byte_lengths(self) -> np.ndarray:
    return self._lengths.copy()


def _read_ranks(path: str) -> dict[bytes, int]:
  # Parsed here rather than by tiktoken.load.load_tiktoken_bpe, which caches files by path in a
  # temp dir and would go on serving a ranks file's old contents after it is rewritten.
  try:
    with open(path, 'rb') as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise ConfigError(f'data.tokenizer: cannot read {path}: {e.strerror}')
  ranks = {}
  for n, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      token, rank = line.split()
      ranks[base64.b64decode(token, validate=True)] = int(rank)
    except ValueError:
      raise ConfigError(f"data.tokenizer: {path} line {n} is not '<base64 token> <rank>'") from None
  if sorted(ranks.values()) != list(range(len(ranks))):
    raise ConfigError(f'data.tokenizer: {path}: ranks are not 0..{len(ranks) - 1}, each once')
  if any(bytes([b]) not in ranks for b in range(256)):
    raise ConfigError(f'data.tokenizer: {path}: not a byte-level BPE (a single byte has no rank)')
  return ranks


def _load(path: str, name: str) -> TiktokenTokenizer:
  ranks = _read_ranks(path)
  sidecar = path + '.json'
  if os.path.exists(sidecar):
    try:
      with open(sidecar, encoding='utf-8') as f:
        meta = json.load(f)
      pat_str, special_tokens = meta['pat_str'], meta['special_tokens']
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ConfigError(f'data.tokenizer: bad sidecar {sidecar} (want JSON with pat_str and '
                        f'special_tokens): {e}') from None
  else:
    pat_str, eot_id = _KNOWN_RANKS.get(len(ranks), (CL100K_PAT_STR, len(ranks)))
    special_tokens = {EOT: eot_id}
  tok = TiktokenTokenizer(name, ranks, pat_str, special_tokens)
  tok.path = path  # the ranks file, which a run copies into its workdir
  return tok


def load_tiktoken(path: str) -> TiktokenTokenizer:
  """Loads a '.tiktoken' ranks file and its optional '<path>.json' sidecar."""
  if not os.path.isfile(path):
    raise ConfigError(f'data.tokenizer: no such file: {path}')
  return _load(path, path)


def _write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def train_bpe(texts: list[str], vocab_size: int, path: str) -> TiktokenTokenizer:
  """Trains a byte-level BPE of exactly vocab_size ids (eot last) and writes it to `path`."""
  import rustbpe  # pylint: disable=g-import-not-at-top  # only needed to train

  if vocab_size <= 257:
    raise ConfigError(f'data.vocab_size={vocab_size}: must be more than 257 for '
                      'data.tokenizer=bpe (256 bytes and the end-of-text token)')
  trainer = rustbpe.Tokenizer()
  trainer.train_from_iterator(iter(texts), vocab_size - 1)
  ranks = dict(trainer.get_mergeable_ranks())
  if len(ranks) != vocab_size - 1:
    # rustbpe stops early when no pair occurs twice; a smaller vocab would silently differ.
    raise ConfigError(f'data.vocab_size={vocab_size}: the train split only has enough text for '
                      f'{len(ranks) + 1} tokens')
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  meta = {'pat_str': trainer.get_pattern(), 'special_tokens': {EOT: vocab_size - 1},
          'trainer': 'rustbpe', 'vocab_size': vocab_size}
  # Sidecar first: a ranks file present means both are complete.
  _write_atomic(path + '.json', json.dumps(meta, indent=1).encode())
  _write_atomic(path, b''.join(base64.b64encode(t) + b' %d\n' % r
                               for t, r in sorted(ranks.items(), key=lambda kv: kv[1])))
  return _load(path, f'bpe-{vocab_size}')


def build_tokenizer(kind: str, *, vocab_size: int, corpus: Corpus, cache_dir: str) -> Tokenizer:
  """`data.tokenizer`: 'byte', 'bpe' (trained on corpus.train once, then cached) or a path."""
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    key = hashlib.sha256(f'{corpus.identity}|{vocab_size}|rustbpe-v1'.encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, 'tokenizers', f'{key}.tiktoken')
    if os.path.exists(path):
      return _load(path, f'bpe-{vocab_size}')
    return train_bpe(corpus.train, vocab_size, path)
  if kind.endswith('.tiktoken') or os.path.isfile(kind):
    return load_tiktoken(kind)
  raise ConfigError(f"data.tokenizer={kind!r}: expected 'byte', 'bpe' or a path to a .tiktoken "
                    'file')


# Special tokens of the denoising objectives, in this order just above the text vocabulary; the
# sentinels follow, sentinel 0 (T5's <extra_id_0>) the highest id.
MASK, PARADIGM_TOKENS = '[MASK]', ('[NLU]', '[NLG]', '[S2S]')


class WithSpecialTokens:
  """A tokenizer with the mask token, UL2's paradigm tokens and `extra_ids` sentinels above its
  vocabulary: ids [V, V + 4) for [MASK], [NLU], [NLG], [S2S], then the sentinels, sentinel k at
  V + 4 + extra_ids - 1 - k (counted down from the top, as T5's). Text encodes as the base does;
  special tokens spell no bytes (bits per byte counts the text), and are never sampled."""

  def __init__(self, base, extra_ids: int):
    self.base = base
    self.extra_ids = extra_ids
    self.name = f'{base.name}+{len(PARADIGM_TOKENS) + 1 + extra_ids} special'
    self.identity = f'{base.identity}|special:{extra_ids}'
    self.eot_id = base.eot_id
    self.sample_vocab_size = base.sample_vocab_size
    self.mask_id = base.vocab_size
    self.paradigm_ids = {t: base.vocab_size + 1 + i for i, t in enumerate(PARADIGM_TOKENS)}
    self.vocab_size = base.vocab_size + 1 + len(PARADIGM_TOKENS) + extra_ids
    self.path = getattr(base, 'path', None)

  def sentinel_id(self, k: int) -> int:
    return self.vocab_size - 1 - k

  def special_name(self, i: int) -> str:
    if i == self.mask_id:
      return MASK
    for name, j in self.paradigm_ids.items():
      if i == j:
        return name
    return f'<extra_id_{self.vocab_size - 1 - i}>'

  def encode(self, text: str) -> list[int]:
    return self.base.encode(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self.base.encode_batch(texts)

  def decode(self, ids) -> str:
    """Text runs as the base decodes them, special tokens by name (<extra_id_0>, [MASK])."""
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    pieces, run = [], []
    for i in ids_N.tolist():
      if i >= self.base.vocab_size:
        pieces.append(self.base.decode(run))
        pieces.append(self.special_name(i))
        run = []
      else:
        run.append(i)
    pieces.append(self.base.decode(run))
    return ''.join(pieces)

  def token_byte_lengths(self) -> np.ndarray:
    out = np.zeros(self.vocab_size, np.int32)
    out[:self.base.vocab_size] = self.base.token_byte_lengths()
    return out


def with_special_tokens(base, extra_ids: int):
  """base itself when no special tokens are asked for (extra_ids < 0), else WithSpecialTokens."""
  return base if extra_ids < 0 else WithSpecialTokens(base, extra_ids)
