"""launch.train end to end in subprocesses: results on disk, exact resume, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY, cli_env, run_cli


def train_args(workdir, cache_dir, *extra, steps=40):
  return ['--config=experiments/quickstart.py', f'--workdir={workdir}', '--progress=false',
          f'--config.data.cache_dir={cache_dir}', f'--config.train.steps={steps}', *TINY, *extra]


BPE = ('--config.data.tokenizer=bpe', '--config.data.vocab_size=512')


def metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  # Timing-dependent fields differ between any two runs; everything else must not.
  return [{k: v for k, v in r.items() if k not in ('tokens_per_sec', 'mfu')} for r in rows]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp('run') / 'a')
  r = run_cli('launch.train', *train_args(workdir, cache_dir, *BPE))
  assert r.returncode == 0, r.stderr
  return workdir, r


def test_run_writes_results(finished_run):
  workdir, r = finished_run
  assert {'config.json', 'metrics.jsonl', 'summary.json', 'checkpoints', 'data_split.json'} <= set(
      os.listdir(workdir))
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  rows = metrics(workdir)
  train = [r for r in rows if r['split'] == 'train']
  evals = [r for r in rows if r['split'] == 'eval']
  assert [r['step'] for r in train] == list(range(5, 41, 5))
  assert [r['step'] for r in evals] == [10, 20, 30, 40]
  assert {'loss', 'learning_rate', 'grad_norm'} <= set(train[0])
  assert {'loss', 'perplexity', 'bits_per_byte'} <= set(evals[0])
  assert evals[-1]['loss'] < evals[0]['loss']
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['step'] == 40 and summary['tokens_seen'] == 40 * 4 * 32
  assert summary['eval']['bits_per_byte'] == evals[-1]['bits_per_byte']
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['vocab_size'] == 512 and config['model']['d_model'] == 32
  # The run carries the BPE it trained, loadable without the cache.
  from research.data.tokenizers import load_tiktoken
  tok = load_tiktoken(os.path.join(workdir, 'tokenizer.tiktoken'))
  assert tok.vocab_size == 512 and tok.decode(tok.encode('In the beginning')) == 'In the beginning'

  assert 'final held-out' in r.stdout and 'bits/byte' in r.stdout
  # Only the last `checkpoint.keep` checkpoints stay.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['30', '40']


def test_rerun_of_finished_run_does_nothing(finished_run, cache_dir):
  workdir, _ = finished_run
  before = metrics(workdir)
  r = run_cli('launch.train', *train_args(workdir, cache_dir, *BPE))
  assert r.returncode == 0, r.stderr
  assert 'already holds this finished run' in r.stderr
  assert metrics(workdir) == before


RESUME_STEPS = 200


def uninterrupted_run(tmp_path_factory, cache_dir, name: str, steps: int) -> str:
  """The workdir of an uninterrupted launch.train run of `steps` steps, for resumes to equal."""
  whole = str(tmp_path_factory.mktemp(name) / 'whole')
  r = run_cli('launch.train', *train_args(whole, cache_dir, steps=steps))
  assert r.returncode == 0, r.stderr
  return whole


@pytest.fixture(scope='module')
def whole_run(tmp_path_factory, cache_dir):
  """The uninterrupted run both interruptions are compared with."""
  return uninterrupted_run(tmp_path_factory, cache_dir, 'whole', RESUME_STEPS)


# The default suite keeps SIGKILL (resume from the last checkpoint); SIGTERM's checkpoint on exit
# runs with the slow tests, here and in the 2-process and objective CLI tests.
@pytest.mark.parametrize('sig', [pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                 signal.SIGKILL])
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, cache_dir, whole_run, sig):
  """SIGTERM saves a checkpoint and exits; SIGKILL loses the steps since the last checkpoint.
  Either way, re-running the command reproduces the uninterrupted run's metrics exactly."""
  steps, whole = RESUME_STEPS, whole_run

  cut = str(tmp_path / 'cut')
  args = train_args(cut, cache_dir, steps=steps)
  proc = subprocess.Popen([sys.executable, '-m', 'launch.train', *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cli_env())
  path = os.path.join(cut, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(json.loads(l)["step"] >= 25 for l in open(path)):
      proc.send_signal(sig)
      break
    time.sleep(0.01)
  out, err = proc.communicate(timeout=240)
  stopped = max(json.loads(l)['step'] for l in open(path))
  assert stopped < steps, 'the run finished before it could be interrupted'
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, err
    assert 'stopped at step' in err and 'Traceback' not in err
    saved = max(int(s) for s in os.listdir(os.path.join(cut, 'checkpoints')))
    assert saved >= 25
  assert not os.path.exists(os.path.join(cut, 'summary.json'))

  r = run_cli('launch.train', *args)
  assert r.returncode == 0, r.stderr
  assert 'resumed from the checkpoint' in r.stderr
  assert metrics(cut) == metrics(whole)


def one_line_error(r, *needles):
  assert r.returncode == 2, (r.returncode, r.stderr)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


def test_bad_inputs_one_line_exit_2(tmp_path, cache_dir):
  w = str(tmp_path / 'w')
  cases = [
      (['--config.model.num_layer=3'], 'num_layer'),
      (['--config.model.norm=batchnorm'], 'model.norm'),
      (['--config.model.num_layers=-1'], 'model.num_layers'),
      (['--config.model.num_layers=abc'], 'num_layers'),
      (['--config.data.source=/no/such/corpus'], '/no/such/corpus'),
      (['--config.data.tokenizer=/no/such.tiktoken'], '/no/such.tiktoken'),
      (['--config.data.tokenizer=wordpiece'], 'data.tokenizer'),
  ]
  cases.append((['--config.seed=-1'], 'seed'))
  cases.append((['--config.model.attention_impl=jax_cudnn'], 'needs an NVIDIA GPU'))
  cases.append((['--config.model.positional=shaw', '--config.model.attention_impl=jax_xla'],
                'cannot add shaw'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'a.txt').write_text('  \n\n')
  cases.append(([f'--config.data.source={empty}'], 'empty'))
  for extra, needle in cases:
    one_line_error(run_cli('launch.train', *train_args(w, cache_dir, *extra)), needle)
  one_line_error(run_cli('launch.train', '--config=experiments/nope.py', f'--workdir={w}'),
                 'nope.py')
  one_line_error(run_cli('launch.train', '--config', 'experiments/nope.py', f'--workdir={w}'),
                 'nope.py')
  afile = tmp_path / 'afile'
  afile.write_text('')
  one_line_error(run_cli('launch.train', *train_args(str(afile / 'w'), cache_dir)), 'afile')
  assert not os.path.exists(w)  # nothing was written for any of these


def test_batch_must_divide_over_devices(tmp_path, cache_dir):
  r = run_cli('launch.train', *train_args(str(tmp_path / 'w'), cache_dir,
                                          '--config.train.batch_size=6'),
              env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  one_line_error(r, 'train.batch_size=6', '4 devices')
  # A vocabulary of 257 cannot be split over 2 tensor-parallel devices: named, nothing written.
  w = str(tmp_path / 'w2')
  r = run_cli('launch.train', *train_args(w, cache_dir, '--config.mesh.shape=(2,1,2)',
                                          '--config.mesh.rules=(("batch","data"),("vocab","tensor"))'),
              env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  one_line_error(r, "['embed']['embedding'] (size 257)", 'tensor = 2')
  assert not os.path.exists(w)


def test_workdir_with_other_config_is_refused(finished_run, cache_dir, tmp_path):
  workdir, _ = finished_run
  snapshot = {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)}
  before = metrics(workdir)
  r = run_cli('launch.train', *train_args(workdir, cache_dir, *BPE, '--config.model.d_model=64'))
  one_line_error(r, 'different config', 'model.d_model: 32 -> 64', '--overwrite')
  assert metrics(workdir) == before
  assert {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)} == snapshot
  # --overwrite replaces it (in a copy, so the module's finished run stays as it was).
  import shutil
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  r = run_cli('launch.train', *train_args(copy, cache_dir, *BPE, '--config.model.d_model=64',
                                          '--overwrite', steps=10))
  assert r.returncode == 0, r.stderr
  with open(os.path.join(copy, 'config.json')) as f:
    assert json.load(f)['model']['d_model'] == 64
  assert [r['step'] for r in metrics(copy) if r['split'] == 'eval'] == [10]
