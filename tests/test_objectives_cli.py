"""Every objective x architecture pair through the CLI: it trains, resumes exactly after a
SIGTERM, and is scored by launch.evaluate --kind=downstream; each pair costs four launches, so the
matrix runs under the `slow` marker and the default suite keeps the one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from research import objectives
from tests.conftest import ROOT, TINY, cli_env, run_cli
from tests.test_cli import metrics, one_line_error

STEPS = 12
PAIRS = [(name, arch) for name, cls in objectives.OBJECTIVES.items() for arch in cls.ARCHS]


def args(workdir, cache_dir, name, arch, *extra):
  return ['--config=experiments/quickstart.py', f'--workdir={workdir}', '--progress=false',
          f'--config.data.cache_dir={cache_dir}', f'--config.train.steps={STEPS}', *TINY,
          '--config.train.log_every=2', '--config.checkpoint.every_steps=4',
          '--config.eval.every_steps=6', f'--config.objective.name={name}',
          f'--config.model.arch={arch}', '--config.model.num_encoder_layers=1',
          '--config.data.extra_ids=100', '--config.sample.num_samples=0', *extra]


def train_interrupted(workdir, cli_args):
  """SIGTERM once a few steps are logged, then the same command again to the end."""
  proc = subprocess.Popen([sys.executable, '-m', 'launch.train', *cli_args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(json.loads(l)['step'] >= 4 for l in open(path) if l.strip()):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err
  stopped = max(json.loads(l)['step'] for l in open(path))
  r = run_cli('launch.train', *cli_args)
  assert r.returncode == 0, r.stderr
  return stopped, r


def check_pair(tmp_path, cache_dir, name, arch):
  whole, cut = str(tmp_path / 'whole'), str(tmp_path / 'cut')
  r = run_cli('launch.train', *args(whole, cache_dir, name, arch))
  assert r.returncode == 0, r.stderr
  stopped, r = train_interrupted(cut, args(cut, cache_dir, name, arch))
  if stopped < STEPS:  # the interruption came in time: the resumed run repeats the whole one
    assert 'resumed from the checkpoint' in r.stderr
  assert metrics(cut) == metrics(whole)
  evals = [m for m in metrics(whole) if m['split'] == 'eval']
  assert [m['step'] for m in evals] == [6, 12] and all(m['loss'] > 0 for m in evals)
  r = run_cli('launch.evaluate', f'--workdir={whole}', '--kind=downstream', '--items=8',
              '--finetune_steps=2', '--length=16')
  assert r.returncode == 0, r.stderr
  with open(os.path.join(whole, 'downstream.json')) as f:
    out = json.load(f)
  assert out['step'] == STEPS and set(out['measures']) == {
      'infilling', 'continuation', 'multiple_choice', 'finetuned'}
  for measure, result in out['measures'].items():
    if arch == 'encoder':  # it predicts in place: it cannot read text-to-text examples
      assert result['applicable'] is False and 'encoder' in result['why'], (measure, result)
    elif 'bits_per_byte' in result:
      assert 0 < result['bits_per_byte'] < 20 and result['bytes'] > 0
    else:
      assert 0 <= result['accuracy'] <= 1, (measure, result)


@pytest.mark.slow
@pytest.mark.parametrize('name,arch', PAIRS)
def test_every_pair_trains_resumes_and_evaluates(tmp_path, cache_dir, name, arch):
  check_pair(tmp_path, cache_dir, name, arch)


def test_bad_objective_inputs_are_one_line_errors(tmp_path, cache_dir):
  w = str(tmp_path / 'w')
  for extra, needle in (
      (['--config.objective.name=span_corruption', '--config.model.arch=encoder'],
       'cannot run on model.arch=encoder'),
      (['--config.objective.noise_density=1.5', '--config.objective.name=span_corruption'],
       'objective.noise_density=1.5'),
      (['--config.objective.mean_span_length=0.5', '--config.objective.name=span_corruption'],
       'objective.mean_span_length=0.5'),
      (['--config.objective.name=span_corruption', '--config.data.seq_len=1'],
       'data.seq_len=1 is too short'),
      (['--config.objective.name=t5'], 'objective.name'),
      (['--config.model.arch=rnn'], 'model.arch'),
  ):
    r = run_cli('launch.train', '--config=experiments/quickstart.py', f'--workdir={w}',
                f'--config.data.cache_dir={cache_dir}', *TINY, *extra)
    one_line_error(r, needle)
  assert not os.path.exists(w)
