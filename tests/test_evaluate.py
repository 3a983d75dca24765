"""launch.evaluate on a trained run: at the training length it reproduces the run's own eval."""

import json
import os

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, run_cli


@pytest.mark.slow
def test_evaluate_lengths_matches_training_eval(tmp_path, cache_dir):
  workdir = str(tmp_path / 'run')
  # Every held-out row is evaluated in training, so the two evaluations score the same tokens.
  r = run_cli('launch.train', '--config=experiments/quickstart.py', f'--workdir={workdir}',
              '--progress=false', f'--config.data.cache_dir={cache_dir}', *TINY,
              '--config.train.steps=20', '--config.model.positional=alibi',
              '--config.eval.max_batches=100000', '--config.sample.num_samples=0')
  assert r.returncode == 0, r.stderr
  with open(os.path.join(workdir, 'summary.json')) as f:
    trained = json.load(f)['eval']

  # A relative workdir, as in the README's command.
  r = run_cli('launch.evaluate', f'--workdir={os.path.relpath(workdir, ROOT)}', '--lengths=1x,64,4x', '--stride=0.5',
              '--max_tokens=100000000')
  assert r.returncode == 0, r.stderr
  with open(os.path.join(workdir, 'eval_lengths.json')) as f:
    out = json.load(f)
  assert list(out['lengths']) == ['32', '64', '128'] and out['train_length'] == 32
  at_1x = out['lengths']['32']['non_overlapping']
  np.testing.assert_allclose(at_1x['loss'], trained['loss'], rtol=1e-5)
  np.testing.assert_allclose(at_1x['bits_per_byte'], trained['bits_per_byte'], rtol=1e-5)
  for length, entry in out['lengths'].items():
    curve = entry['non_overlapping']['per_position_loss']
    assert len(curve) == int(length) and np.isfinite(curve).all()
    sliding = entry['sliding']
    assert sliding['stride'] == int(length) // 2
    # Sliding windows give every scored token at least half a window of context.
    assert sliding['loss'] < entry['non_overlapping']['loss']
  # The first position has no context: its loss is the worst on the curve.
  curve = out['lengths']['32']['non_overlapping']['per_position_loss']
  assert curve[0] == max(curve)


def test_evaluate_errors(tmp_path):
  r = run_cli('launch.evaluate', f'--workdir={tmp_path}', '--lengths=2x')
  assert r.returncode == 2 and r.stderr.strip() == f'error: --workdir={tmp_path} holds no run (no config.json)'


def test_lengths_past_a_learned_table_refuse_in_one_line(monkeypatch):
  """Past model.max_len a learned model has no position to read: launch.evaluate refuses before
  compiling anything (in the model such a position reads NaN, research/model/positional.py)."""
  import ml_collections
  import pytest
  from research.errors import ConfigError
  from research.evaluate import lengths
  resolved = ml_collections.ConfigDict({'data': {'seq_len': 32},
                                        'model': {'positional': 'learned', 'max_len': 64}})
  monkeypatch.setattr(lengths, 'load_run', lambda workdir: (resolved, None, None, None, None, 7))
  with pytest.raises(ConfigError, match=r'^--lengths: 128 tokens read positions up to 127, past '
                     r'the learned position table of model.max_len=64 rows'):
    lengths.evaluate_run('run', lengths='1x,2x,4x', stride=0.5, max_tokens=1024)
