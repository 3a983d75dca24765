"""Several JAX processes on localhost (launch.local_cluster, gloo): one run, as on several hosts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli_env, run_cli
from tests.test_cli import metrics, one_line_error, train_args

STEPS = 60


def cluster_cmd(*train):
  return [sys.executable, '-m', 'launch.local_cluster', '--num_processes=2', '--',
          sys.executable, '-m', 'launch.train', *train]


def close(rows_a, rows_b):
  """Same rows, the floats equal up to float32 reordering: two devices sum in another order than
  one. Over 120 steps losses moved by at most 2.5e-6 relative, the gradient norm by 9e-5."""
  assert len(rows_a) == len(rows_b)
  for a, b in zip(rows_a, rows_b):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], float):
        rel = 5e-4 if k == 'grad_norm' else 2e-5
        assert b[k] == pytest.approx(a[k], rel=rel, abs=1e-6), (a['step'], k)
      else:
        assert a[k] == b[k], (a['step'], k)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_sigterm(tmp_path, cache_dir):
  """2 processes x 1 device = the 1-process run; SIGTERM to the cluster checkpoints collectively
  and the same command resumes it; only process 0 writes the run's files."""
  one = str(tmp_path / 'one')
  r = run_cli('launch.train', *train_args(one, cache_dir, steps=STEPS))
  assert r.returncode == 0, r.stderr

  two = str(tmp_path / 'two')
  args = train_args(two, cache_dir, steps=STEPS)
  env = cli_env()
  proc = subprocess.Popen(cluster_cmd(*args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  path = os.path.join(two, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(json.loads(l)['step'] >= 25 for l in open(path)):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  stopped = max(json.loads(l)['step'] for l in open(path))
  assert stopped < STEPS, 'the run finished before it could be interrupted'
  assert 'stopped at step' in err and 'Traceback' not in err
  assert not os.path.exists(os.path.join(two, 'summary.json'))

  r = subprocess.run(cluster_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'resumed from the checkpoint' in r.stderr
  # Process 1 printed nothing of the run's own (its lines carry the [process 1] prefix).
  assert not [l for l in r.stderr.splitlines() if l.startswith('[process 1]') and 'loss' in l]
  close(metrics(two), metrics(one))
  events = [n for n in os.listdir(two) if n.startswith('events.out.tfevents')]
  assert len(events) == 2  # one per launch, both from process 0
  with open(os.path.join(two, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['devices'] == 2 and summary['step'] == STEPS


def test_incomplete_distributed_settings_are_one_line_errors(tmp_path, cache_dir):
  r = run_cli('launch.train', *train_args(str(tmp_path / 'w'), cache_dir),
              env={'JAX_NUM_PROCESSES': '2'})
  one_line_error(r, 'coordinator address', 'process id')
  r = run_cli('launch.train', *train_args(str(tmp_path / 'w'), cache_dir),
              '--coordinator_address=127.0.0.1:1', '--num_processes=2', '--process_id=2')
  one_line_error(r, 'process id 2 is not in [0, 2)')
  assert not os.path.exists(tmp_path / 'w')


def test_local_cluster_needs_a_command():
  one_line_error(run_cli('launch.local_cluster', '--num_processes=2'), 'after --')
