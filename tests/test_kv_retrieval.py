"""The synthetic key-value retrieval probe: batch layout, determinism, depths, exact match."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from research import config as config_lib
from research.data import kv_retrieval as kv
from research.errors import ConfigError
from research.evaluate import kv_depths
from research.model.archs import Decoder
from research.model.transformer import ModelConfig
from research.train import step as step_lib

SHAPE = dict(seq_len=48, num_pairs=5, key_len=2, value_len=3)
ROW = 1 + 5 * (2 + 1 + 3 + 1) + 1 + 2 + 1 + 3  # eot, pairs, QUERY key : value


def test_sequence_length():
  assert kv.sequence_length(5, 2, 3) == ROW
  assert kv.sequence_length(20, 2, 2) == 127


def test_batch_layout():
  b = kv.kv_batch(0, 3, batch_size=16, **SHAPE)
  n, k, v, t = SHAPE['num_pairs'], SHAPE['key_len'], SHAPE['value_len'], SHAPE['seq_len']
  assert {x: b[x].dtype for x in b} == {'inputs': np.int32, 'targets': np.int32,
                                        'segment_ids': np.int32, 'positions': np.int32,
                                        'loss_mask': np.float32}
  assert all(x.shape == (16, t) for x in b.values())
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
  seq = np.concatenate([b['inputs'], b['targets'][:, -1:]], axis=1)
  assert (seq[:, 0] == kv.EOT).all()
  pairs = seq[:, 1:1 + n * (k + v + 2)].reshape(16, n, k + v + 2)
  assert (pairs[:, :, k] == kv.KV_SEP).all() and (pairs[:, :, -1] == kv.PAIR_SEP).all()
  keys, values = pairs[:, :, :k], pairs[:, :, k + 1:k + 1 + v]
  assert (keys < kv.NUM_SYMBOLS).all() and (values < kv.NUM_SYMBOLS).all()
  for row in keys:
    assert len({tuple(key) for key in row}) == n
  query = seq[:, 1 + n * (k + v + 2):ROW]
  assert (query[:, 0] == kv.QUERY).all() and (query[:, 1 + k] == kv.KV_SEP).all()
  gold = [[tuple(key) for key in row].index(tuple(q)) for row, q in zip(keys, query[:, 1:1 + k])]
  np.testing.assert_array_equal(query[:, 2 + k:], values[np.arange(16), gold])
  # Exactly the query's value tokens are scored, and they are the gold value.
  assert (b['loss_mask'].sum(1) == v).all()
  np.testing.assert_array_equal(b['targets'][b['loss_mask'] > 0].reshape(16, v),
                                values[np.arange(16), gold])
  real = np.arange(t) < ROW
  assert (b['segment_ids'] == real).all()
  assert (b['positions'] == np.where(real, np.arange(t), 0)).all()
  assert (b['loss_mask'][:, ~real] == 0).all()
  assert len(set(gold)) > 1  # gold=None draws the depth per row


def test_determinism_gold_and_splits():
  a, again = (kv.kv_batch(1, 7, batch_size=8, **SHAPE) for _ in range(2))
  for key in a:
    np.testing.assert_array_equal(a[key], again[key])
  assert (a['inputs'] != kv.kv_batch(1, 8, batch_size=8, **SHAPE)['inputs']).any()
  assert (a['inputs'] != kv.kv_batch(1, 7, batch_size=8, split='eval', **SHAPE)['inputs']).any()
  at = kv.kv_batch(1, 7, batch_size=8, gold=3, **SHAPE)
  per = 2 + SHAPE['key_len'] + SHAPE['value_len']
  key3 = at['inputs'][:, 1 + 3 * per:1 + 3 * per + SHAPE['key_len']]
  np.testing.assert_array_equal(at['inputs'][:, ROW - 6:ROW - 4], key3)  # QUERY key : value
  # Only the query changes with gold: the pair lists are the same.
  np.testing.assert_array_equal(at['inputs'][:, :ROW - 6], a['inputs'][:, :ROW - 6])
  with pytest.raises(ConfigError):
    kv.kv_batch(1, 7, batch_size=8, gold=5, **SHAPE)


def test_loader_process_slices():
  loader = kv.KvLoader(seed=2, batch_size=8, **SHAPE)
  whole = loader.batch(4)
  parts = [loader.batch(4, process_index=i, process_count=4) for i in range(4)]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  np.testing.assert_array_equal(whole['inputs'], kv.kv_example(2, 4, batch_size=8, **SHAPE)['inputs'])


def test_too_long_config_names_seq_len():
  with pytest.raises(ConfigError, match=r'data\.seq_len=100.*127 tokens.*at least 126'):
    kv.KvLoader(seed=0, seq_len=100, batch_size=2, num_pairs=20, key_len=2, value_len=2)
  kv.kv_batch(0, 0, batch_size=2, seq_len=126, num_pairs=20, key_len=2, value_len=2)
  with pytest.raises(ConfigError, match='kv_key_len'):
    kv.kv_batch(0, 0, batch_size=2, seq_len=500, num_pairs=65, key_len=1, value_len=1)


def test_dense_keys_are_distinct():
  b = kv.kv_batch(0, 0, batch_size=4, seq_len=250, num_pairs=60, key_len=1, value_len=1)
  keys = b['inputs'][:, 1:1 + 60 * 4:4]
  assert all(len(set(row)) == 60 for row in keys)


def test_depths():
  assert kv.depths(20) == [0, 5, 10, 14, 19]
  assert kv.depths(3) == [0, 1, 2]


def test_tokenizer():
  tok = kv.SyntheticTokenizer()
  assert tok.vocab_size == kv.VOCAB_SIZE == 68 and tok.eot_id == kv.EOT
  assert (tok.token_byte_lengths() == 1).all() and len(tok.token_byte_lengths()) == 68
  assert tok.decode([kv.EOT, 10, 3, kv.KV_SEP, 15, 0, kv.PAIR_SEP, kv.QUERY, 10, 3, kv.KV_SEP]) == \
      'a3 : f0 ; ? a3 :'
  with pytest.raises(ConfigError):
    tok.encode('a3')


def test_exact_match_counts_whole_values():
  targets = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
  mask = np.array([[0, 1, 1, 0]] * 3, np.float32)
  pred = targets.copy()
  pred[1, 2] = 0  # one wrong scored token: the row fails
  pred[2, 0] = 0  # a wrong unscored token: the row still counts
  logits = np.eye(5)[pred]
  np.testing.assert_array_equal(kv_depths._exact_match(logits, targets, mask), [True, False, True])


@pytest.mark.slow
def test_depth_accuracy_on_untrained_model():
  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads = 1, 32, 2
  c.data.seq_len = SHAPE['seq_len']
  model = Decoder(ModelConfig.from_config(config_lib.resolve(c, vocab_size=kv.VOCAB_SIZE)))
  params = nn.meta.unbox(step_lib.init_params(model, jax.random.PRNGKey(0),
                                              {'length': SHAPE['seq_len']}))
  out = kv_depths.depth_accuracy(model, params, seed=0, rows=6, batch_size=4, **SHAPE)
  assert out['depths'] == kv.depths(5) and out['rows'] == 6 and out['num_pairs'] == 5
  assert len(out['accuracy']) == len(out['depths'])
  assert all(0 <= a <= 1 for a in out['accuracy'])


def test_train_and_score_through_the_cli(tmp_path):
  """data.source=kv_retrieval trains through launch.train; the run is then scored by depth."""
  import json
  import os
  from tests.conftest import run_cli
  workdir = str(tmp_path / 'kv')
  r = run_cli('launch.train', '--config=experiments/positional/lost_in_middle.py:cpu',
              f'--workdir={workdir}', '--progress=false', '--config.train.steps=6',
              '--config.train.warmup_steps=1', '--config.model.num_layers=1',
              '--config.model.d_model=32', '--config.train.batch_size=8',
              '--config.eval.every_steps=6', '--config.train.log_every=3')
  assert r.returncode == 0, r.stderr
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['vocab_size'] == kv.VOCAB_SIZE and summary['tokens_seen'] == 6 * 8 * 32
  out = kv_depths.evaluate_run(workdir, rows=16)
  assert out['depths'] == kv.depths(6) and len(out['accuracy']) == len(out['depths'])
  assert os.path.exists(os.path.join(workdir, 'kv_depths.json'))


def test_multi_query_rows_score_every_answer():
  shape = dict(SHAPE, num_pairs=4, queries=3, seq_len=64)
  n, k, v = 4, SHAPE['key_len'], SHAPE['value_len']
  b = kv.kv_batch(0, 3, batch_size=8, **shape)
  seq = np.concatenate([b['inputs'], b['targets'][:, -1:]], axis=1)
  pairs = seq[:, 1:1 + n * (k + v + 2)].reshape(8, n, k + v + 2)
  keys, values = pairs[:, :, :k], pairs[:, :, k + 1:k + 1 + v]
  asked = seq[:, 1 + n * (k + v + 2):kv.sequence_length(n, k, v, 3)].reshape(8, 3, k + v + 2)
  assert (asked[:, :, 0] == kv.QUERY).all() and (asked[:, :, 1 + k] == kv.KV_SEP).all()
  for row in range(8):
    index = [[tuple(x) for x in keys[row]].index(tuple(q)) for q in asked[row, :, 1:1 + k]]
    np.testing.assert_array_equal(asked[row, :, 2 + k:], values[row, index])
  # Every answer's value tokens are scored, nothing else.
  assert (b['loss_mask'].sum(1) == 3 * v).all()
  np.testing.assert_array_equal(b['targets'][b['loss_mask'] > 0].reshape(8, 3, v),
                                asked[:, :, 2 + k:])
  # The first query is a one-query row's: same pairs, same queried pair.
  one = kv.kv_batch(0, 3, batch_size=8, **dict(shape, queries=1))
  first = kv.sequence_length(n, k, v) - 1
  np.testing.assert_array_equal(b['inputs'][:, :first], one['inputs'][:, :first])
  # Later queries ask pairs with replacement, so the last answers cannot follow by elimination:
  # over 256 rows, some ask a pair twice, and more queries than pairs is a valid row.
  many = kv.kv_example(0, 3, batch_size=256, **dict(shape, queries=5))
  seq = np.concatenate([many['inputs'], many['targets']], axis=1)
  keys = seq[:, 1:1 + n * (k + v + 2)].reshape(256, n, k + v + 2)[:, :, :k]
  asked = seq[:, 1 + n * (k + v + 2):].reshape(256, 5, k + v + 2)[:, :, 1:1 + k]
  index = np.array([[[tuple(x) for x in keys[r]].index(tuple(q)) for q in asked[r]]
                    for r in range(256)])
  values = seq[:, 1 + n * (k + v + 2):].reshape(256, 5, k + v + 2)[:, :, 2 + k:]
  np.testing.assert_array_equal(values, seq[:, 1:1 + n * (k + v + 2)].reshape(
      256, n, k + v + 2)[np.arange(256)[:, None], index, k + 1:k + 1 + v])
  # Two later queries ask the same pair a quarter of the time (never, were they distinct).
  assert 0.15 < np.mean(index[:, 1] == index[:, 2]) < 0.35
  with pytest.raises(ConfigError, match='data.kv_queries=0'):
    kv.kv_batch(0, 3, batch_size=8, **dict(shape, queries=0))


def test_curriculum_grows_the_pairs_as_a_function_of_the_step():
  stages = [kv.curriculum_pairs(s, num_pairs=3, curriculum_steps=30) for s in range(0, 40, 5)]
  assert stages == [1, 1, 2, 2, 3, 3, 3, 3]
  assert kv.curriculum_pairs(0, num_pairs=3, curriculum_steps=0) == 3
  loader = kv.KvLoader(seed=2, batch_size=4, curriculum_steps=30, queries=2,
                       **dict(SHAPE, num_pairs=3))
  row = lambda step: loader.batch(step)['inputs'].shape[1]
  per = SHAPE['key_len'] + SHAPE['value_len'] + 2
  # One pair asks one query; then rows grow by a pair each stage; resuming needs only the step.
  assert [row(0), row(10), row(29), row(100)] == [1 + per + 1 + SHAPE['key_len'] + 1,
                                                  1 + 2 * per + 1 + SHAPE['key_len'] + 1,
                                                  1 + 3 * per + 1 + SHAPE['key_len'] + 1,
                                                  1 + 3 * per + 1 + SHAPE['key_len'] + 1]
  np.testing.assert_array_equal(loader.batch(12)['targets'], loader.batch(12)['targets'])
  assert loader.batch(12)['targets'].shape[1] == SHAPE['value_len'] + per  # v, then ? k : v
