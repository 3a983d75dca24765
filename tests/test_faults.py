"""Real faults, made to happen: a NaN from a real step, damaged checkpoints, a full filesystem,
kill -9 during a save, a killed sweep, a lost process, two launches on one workdir, a damaged
token cache. docs/reliability.md's "What survives what" table names the test of each.

The default suite runs the in-process ones (a run of the TINY model in this process takes a few
seconds); the subprocess ones (kill -9 timings, sweeps, two processes) are marked slow.
"""

import ast
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, cli_env, run_cli
from tests.test_cli import uninterrupted_run, metrics, one_line_error, train_args
from tests.test_sweep import CONFIG as SWEEP_CONFIG


@pytest.fixture(scope='module', autouse=True)
def no_matmul_timing():
  """Each run times the device's matmul peak for its MFU figure (a second or more of both
  cores); these runs compare no timing, so they take a fixed figure instead."""
  from research.train import flops
  with pytest.MonkeyPatch.context() as m:
    m.setattr(flops, 'matmul_peak', lambda *_, **__: 1e11)
    yield


@pytest.fixture(scope='module', autouse=True)
def compiled_once():
  """The session's persistent compilation cache for the runs in this process too: a TINY train
  step takes 8-10 s of CPU to compile, and these tests run each program two or three times.
  (Restored afterwards; the other tests of this worker keep JAX's defaults.)"""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  old = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', cli_env()['JAX_COMPILATION_CACHE_DIR'])
  cc.reset_cache()
  yield
  jax.config.update('jax_compilation_cache_dir', old)
  cc.reset_cache()


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A small corpus: preparing it takes a tenth of the default corpus's 1.5-2 s per run."""
  path = tmp_path_factory.mktemp('corpus') / 'corpus.txt'
  words = 'the of and to in that was he for it with as his on be at by had not are but'.split()
  rng = np.random.default_rng(0)
  path.write_text('\n\n'.join(' '.join(rng.choice(words, size=60)) for _ in range(400)))
  return str(path)


def tiny_config(cache_dir, source=None, **overrides):
  """The TINY model of tests/conftest.py as a config, for runs in this process."""
  from research.config import default_config
  c = default_config()
  values = dict(arg[len('--config.'):].split('=', 1) for arg in TINY)
  values.update({'data.cache_dir': cache_dir, 'sample.num_samples': 0}, **overrides)
  if source:
    values['data.source'] = source
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    if isinstance(value, str) and not isinstance(node[leaf], str):
      value = ast.literal_eval(value)
    node[leaf] = value
  return c


class Recorder:
  """A loop Reporter that keeps the messages and can act at a logged step."""

  def __init__(self, at_step=None, action=None):
    self.messages, self.at_step, self.action = [], at_step, action

  def message(self, text):
    self.messages.append(text)

  def train(self, step, _):
    if step == self.at_step:
      self.action()

  def start(self, **_): ...
  def eval(self, *_): ...
  def close(self): ...


def rows(workdir):
  return [{k: v for k, v in r.items() if k not in ('tokens_per_sec', 'mfu', 'skipped_steps')}
          for r in metrics(workdir)]


def restored_params(workdir, step):
  import jax
  from research import config as config_lib, parallel
  from research.train import checkpoint, trainer
  resolved = config_lib.load_json(os.path.join(workdir, 'config.json'))
  tr = trainer.make_trainer(resolved, parallel.make_mesh(resolved.mesh.shape))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=5)
  abstract = checkpoint.abstract_like(tr.init.eval_shape(jax.random.PRNGKey(0)), tr.state_sh)
  state, loader = ckpt.restore(step, abstract)
  ckpt.close()
  return jax.device_get(state), loader


# ---- 1. A non-finite loss.

def test_nonfinite_loss_stops_at_its_step_and_saves_nothing_after(tmp_path, cache_dir, corpus):
  """A learning rate of 1e30: step 1 is finite, its update makes the parameters ~1e29, and
  step 2's forward overflows. The run stops there, with one line naming the step and the
  metric; the checkpoint of step 1 is the last one, and it is finite."""
  from research.errors import RunError
  from research.train import loop
  workdir = str(tmp_path / 'nan')
  config = tiny_config(cache_dir, corpus, **{'train.learning_rate': 1e30, 'train.log_every': 1,
                                             'checkpoint.every_steps': 1, 'train.steps': 10})
  with pytest.raises(RunError) as e:
    loop.train(config, workdir)
  line = str(e.value)
  assert '\n' not in line
  assert re.match(r'step 2: loss is (nan|inf); stopped, saving nothing after it \(the last '
                  r'checkpoint is step 1 in .*checkpoints\)\. Lower train\.learning_rate, or '
                  r'set train\.skip_nonfinite=N', line), line
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['1']
  assert [(r['step'], r['split']) for r in metrics(workdir)] == [(1, 'train')]
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  import jax
  state, _ = restored_params(workdir, 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_skip_nonfinite_skips_the_update_counts_the_step_and_stops_after_n_in_a_row(
    tmp_path, cache_dir, corpus):
  """train.skip_nonfinite=3: steps 2, 3, 4 are skipped (their update not applied, the step and
  the schedule counted), counted in metrics.jsonl, and the 4th in a row (step 5) stops the run.
  The count is carried in the checkpoint: the same command stops at the same step again."""
  import jax
  from research.errors import RunError
  from research.train import loop
  workdir = str(tmp_path / 'skip')
  config = tiny_config(cache_dir, corpus, **{'train.learning_rate': 1e30, 'train.log_every': 1,
                                             'checkpoint.every_steps': 2, 'train.steps': 10,
                                             'train.skip_nonfinite': 3})
  for _ in range(2):  # the second launch resumes from step 4, its counters restored
    with pytest.raises(RunError) as e:
      loop.train(config, workdir)
    assert re.match(r'step 5: loss is (nan|inf), non-finite for 4 steps in a row '
                    r'\(train\.skip_nonfinite=3\); stopped, saving nothing after it \(the last '
                    r'checkpoint is step 4 in ', str(e.value)), str(e.value)
  train = metrics(workdir)
  assert [r['step'] for r in train] == [1, 2, 3, 4]
  assert [r['skipped_steps'] for r in train] == [0, 1, 2, 3]
  assert train[0]['loss'] > 0 and [r['loss'] for r in train[1:]] == [None] * 3  # JSON null
  rates = [r['learning_rate'] for r in train]
  assert rates == sorted(rates) and len(set(rates)) == 4  # the warmup went on through the skips
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  at2, loader2 = restored_params(workdir, 2)
  at4, loader4 = restored_params(workdir, 4)
  # No update after step 1: the parameters and Adam's moments of step 4 are those of step 2;
  # the step counts moved on.
  same = jax.tree.map(np.array_equal, (at2.params, at2.opt_state[1][0].mu),
                      (at4.params, at4.opt_state[1][0].mu))
  assert all(jax.tree.leaves(same))
  assert (int(at2.step), int(at4.step)) == (2, 4)
  assert loader4['skipped_steps'] == 3 and loader4['nonfinite_streak'] == 3


# ---- 2. A damaged latest checkpoint.

STEPS = 30


@pytest.fixture(scope='module')
def whole_run(tmp_path_factory, cache_dir, corpus):
  """An uninterrupted 30-step run in this process, which the interrupted ones must equal."""
  from research.train import loop
  whole = str(tmp_path_factory.mktemp('whole') / 'whole')
  loop.train(tiny_config(cache_dir, corpus, **{'train.steps': STEPS}), whole)
  return whole


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, cache_dir, corpus,
                                                                whole_run):
  """The run killed between its step-30 checkpoint and its summary, then checkpoint 30's array
  files truncated: the re-run warns once, naming 30, resumes from 20 and logs exactly the
  uninterrupted run's metrics. When no checkpoint restores, the run refuses in one line and
  moves nothing."""
  from research.errors import RunError
  from research.train import loop
  config = tiny_config(cache_dir, corpus, **{'train.steps': STEPS})
  cut = str(tmp_path / 'cut')
  shutil.copytree(whole_run, cut)
  os.remove(os.path.join(cut, 'summary.json'))
  damaged = glob.glob(os.path.join(cut, 'checkpoints', '30', 'state', 'ocdbt.process_0', 'd', '*'))
  assert damaged
  for path in damaged:
    os.truncate(path, os.path.getsize(path) // 2)

  recorder = Recorder()
  summary = loop.train(config, cut, reporter=recorder)
  warnings = [m for m in recorder.messages if m.startswith('warning:')]
  assert len(warnings) == 1 and 'checkpoint 30 in' in warnings[0], recorder.messages
  assert 'resuming from step 20' in warnings[0]
  assert 'resumed from the checkpoint at step 20' in recorder.messages
  assert rows(cut) == rows(whole_run)
  assert summary['step'] == STEPS
  assert os.listdir(os.path.join(cut, 'checkpoints_skipped')) == ['30']  # kept for a look
  assert sorted(os.listdir(os.path.join(cut, 'checkpoints'))) == ['20', '30']

  # Nothing restores (both truncated): one line naming the newest, nothing moved.
  os.remove(os.path.join(cut, 'summary.json'))
  for step in ('20', '30'):
    for path in glob.glob(os.path.join(cut, 'checkpoints', step, 'state', '*', 'd', '*')):
      os.truncate(path, 10)
  with pytest.raises(RunError, match=r'no checkpoint in .*checkpoints restores into this run '
                                     r'\(the newest, step 30: '):
    loop.train(config, cut)
  assert sorted(os.listdir(os.path.join(cut, 'checkpoints'))) == ['20', '30']


# ---- 4. A full filesystem.

@pytest.fixture
def small_fs(tmp_path):
  """A 4 MB tmpfs of this test's own: writes past it fail with ENOSPC, as on a full disk."""
  mount = tmp_path / 'small'
  mount.mkdir()
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f'cannot mount a small tmpfs here (needs root): {r.stderr.strip()}')
  yield str(mount)
  subprocess.run(['umount', '-l', str(mount)], check=False)


def fill(mount):
  """Fills the filesystem at mount."""
  st = os.statvfs(mount)
  with open(os.path.join(mount, 'ballast'), 'wb', buffering=0) as f:
    try:
      f.write(b'\0' * (st.f_bavail * st.f_frsize))
      while f.write(b'\0' * 4096):  # until ENOSPC: the last pages
        pass
    except OSError:
      pass


def wait_for(path, timeout=60):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.01)


def test_full_disk_stops_the_run_with_the_path_and_keeps_what_was_written(
    small_fs, cache_dir, corpus, whole_run):
  """The filesystem fills up at step 10, once checkpoint 5 is complete. The next write that
  needs a new block fails (a checkpoint's files, an event, a metrics row: which comes first
  depends on the pages already allocated): one line naming the path and 'No space left on
  device'; checkpoint 5 restores, and every row already in metrics.jsonl is whole. With space
  again, the same command resumes from checkpoint 5 to the uninterrupted run's metrics."""
  from research.errors import RunError
  from research.train import loop
  workdir = os.path.join(small_fs, 'run')
  # train.steps as the whole run's: the same train step, compiled once.
  config = tiny_config(cache_dir, corpus, **{'train.steps': STEPS, 'checkpoint.every_steps': 5})

  def disk_fills():
    wait_for(os.path.join(workdir, 'checkpoints', '5'))  # saves run in the background
    fill(small_fs)

  with pytest.raises(RunError) as e:
    loop.train(config, workdir, reporter=Recorder(at_step=10, action=disk_fills))
  line = str(e.value)
  assert re.fullmatch(rf'cannot write (a checkpoint in )?{workdir}/\S+: No space left on device'
                      rf'( \({workdir}/\S+\))?', line), line
  with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
    assert f.read().endswith(b'\n')
  written = [(r['step'], r['split']) for r in metrics(workdir)]
  assert written[:2] == [(5, 'train'), (10, 'train')] and len(written) <= 4, written
  state, loader = restored_params(workdir, 5)
  assert loader['step'] == 5 and int(state.step) == 5

  os.remove(os.path.join(small_fs, 'ballast'))
  recorder = Recorder()
  loop.train(config, workdir, reporter=recorder)
  assert 'resumed from the checkpoint at step 5' in recorder.messages
  assert rows(workdir) == rows(whole_run)


def test_metrics_row_on_a_full_device_names_the_path(tmp_path):
  """/dev/full fails every write with ENOSPC (no mount needed): put under the writer's own
  descriptor, the row's write is a RunError naming metrics.jsonl, and the rows before it stay."""
  from research.errors import RunError
  from research.train.metrics import MetricsWriter
  writer = MetricsWriter(str(tmp_path), resume_step=0)
  writer.write(5, 'train', {'loss': 1.0})
  full = os.open('/dev/full', os.O_WRONLY)
  os.dup2(full, writer._fd)  # pylint: disable=protected-access
  os.close(full)
  with pytest.raises(RunError, match=f'cannot write {tmp_path}/metrics.jsonl: No space left'):
    writer.write(10, 'train', {'loss': 0.5})
  writer.close()
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [5]


def test_a_torn_last_metrics_row_is_dropped_on_resume(tmp_path):
  from research.train.metrics import MetricsWriter
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('{"step": 5, "split": "train", "loss": 1.0}\n{"step": 10, "spl')
  MetricsWriter(str(tmp_path), resume_step=10).close()
  assert [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')] == [5]


# ---- 7. Two launches on one workdir.

def test_workdir_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path):
  """The lock launch.train takes (process 0 of a run): a second taker is refused with the
  holder named; when the holder is killed (kill -9), the kernel drops the lock."""
  from research.errors import RunError
  from research.train.loop import WorkdirLock
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\nfrom research.train.loop import WorkdirLock\n'
       'WorkdirLock(sys.argv[1], "w")\nprint("held", flush=True)\ntime.sleep(300)',
       str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=cli_env())
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(RunError, match=rf'--workdir=w is in use: process {holder.pid} on .* is '
                                       r'training in it'):
      WorkdirLock(str(tmp_path), 'w')
  finally:
    holder.kill()
    holder.wait()
  WorkdirLock(str(tmp_path), 'w').release()  # the stale lock file blocks nothing


# ---- 8. A damaged or stale token cache.

def test_token_cache_truncated_or_stale_is_never_read(tmp_path):
  """A truncated or missing array, or a meta.json that is not JSON, is detected from the sizes
  meta.json records and rebuilt; an edited corpus has another cache (its key hashes the text)."""
  from research.data import cache, sources
  from research.data.tokenizers import ByteTokenizer
  corpus_file = tmp_path / 'corpus.txt'
  corpus_file.write_text('\n\n'.join(f'Paragraph {i}: ' + 'some words ' * (i % 7 + 3)
                                     for i in range(60)))
  cache_dir = str(tmp_path / 'cache')
  tok = ByteTokenizer()
  corpus = sources.load_corpus(str(corpus_file))
  first = cache.cached_streams(corpus, tok, cache_dir)
  tokens = np.array(first['train'].tokens)
  (key,) = os.listdir(os.path.join(cache_dir, 'tokens'))
  key_dir = os.path.join(cache_dir, 'tokens', key)

  def damage_and_reload(damage):
    damage()
    assert cache.problem(key_dir, corpus, tok) is not None
    streams = cache.cached_streams(corpus, tok, cache_dir)
    assert cache.problem(key_dir, corpus, tok) is None
    np.testing.assert_array_equal(streams['train'].tokens, tokens)

  train_npy = os.path.join(key_dir, 'train.tokens.npy')
  damage_and_reload(lambda: os.truncate(train_npy, os.path.getsize(train_npy) - 100))
  damage_and_reload(lambda: os.truncate(train_npy, 50))  # into the header
  damage_and_reload(lambda: open(train_npy, 'ab').write(b'\0\0'))  # longer than recorded
  damage_and_reload(lambda: os.remove(os.path.join(key_dir, 'eval.doc_starts.npy')))
  damage_and_reload(lambda: open(os.path.join(key_dir, 'meta.json'), 'w').write('{"for'))

  corpus_file.write_text(corpus_file.read_text().replace('Paragraph 3:', 'Paragraph three:'))
  edited = sources.load_corpus(str(corpus_file))
  assert edited.identity != corpus.identity
  streams = cache.cached_streams(edited, tok, cache_dir)
  assert len(os.listdir(os.path.join(cache_dir, 'tokens'))) == 2
  text = tok.decode(np.asarray(streams['train'].tokens)) + tok.decode(
      np.asarray(streams['eval'].tokens))
  assert 'Paragraph three:' in text and 'Paragraph 3:' not in text


# ---- Through the command line, in subprocesses (slow): kill -9 at chosen moments, sweeps, two
# processes, and the one line each fault prints.

SLOW_STEPS = 60


@pytest.fixture(scope='module')
def whole_cli_run(tmp_path_factory, cache_dir):
  """The uninterrupted launch.train run that the interrupted ones must equal."""
  return uninterrupted_run(tmp_path_factory, cache_dir, 'whole_cli', SLOW_STEPS)


# What a run prints before anything can go wrong: its start and its progress (and orbax's
# warning when a save waits for the one before, on a busy machine).
_RUN_LINE = re.compile(r'(data ready in |[\d,]+ parameters; |step \d+: |eval at step \d+: |'
                       r'W\d{4} .* Waiting for previous save to complete took )')


def run_error(r, *needles):
  """The one line `error: ...` a run printed after its own start and progress lines; status 2."""
  kept = '\n'.join(l for l in r.stderr.splitlines() if not _RUN_LINE.match(l))
  return one_line_error(subprocess.CompletedProcess(r.args, r.returncode, r.stdout, kept),
                        *needles)


def start_train(args, **popen):
  return subprocess.Popen([sys.executable, '-m', 'launch.train', *args], cwd=ROOT, env=cli_env(),
                          text=True, **popen)


def wait_for_row(path, step, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(json.loads(l)['step'] >= step for l in open(path)):
      return
    time.sleep(0.01)
  raise AssertionError(f'no row of step {step} in {path} (exit status {proc.poll()})')


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_save_resumes_to_the_same_metrics(tmp_path, cache_dir,
                                                                     whole_cli_run):
  """The test watches for orbax's temporary directory of a save (step 20 or later), freezes the
  run (SIGSTOP) while that directory is still there, then kills it (SIGKILL): the save is cut
  short. The same command resumes from the last complete checkpoint, removes the half-written
  one, and finishes with the uninterrupted run's metrics. It resumes with
  train.skip_nonfinite=2, which a resumed run may change and which on finite steps must change
  no value."""
  cut = str(tmp_path / 'cut')
  args = train_args(cut, cache_dir, steps=SLOW_STEPS)
  proc = start_train(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  checkpoints = os.path.join(cut, 'checkpoints')
  caught, deadline = None, time.time() + 240
  while caught is None and proc.poll() is None and time.time() < deadline:
    saving = [n for n in (os.listdir(checkpoints) if os.path.isdir(checkpoints) else ())
              if n.endswith('.orbax-checkpoint-tmp') and int(n.split('.')[0]) >= 20]
    if saving:
      proc.send_signal(signal.SIGSTOP)
      if os.path.exists(os.path.join(checkpoints, saving[0])):
        caught = saving[0]
        proc.kill()
      else:  # it finished between the look and the stop: wait for the next one
        proc.send_signal(signal.SIGCONT)
    time.sleep(0.0005)
  proc.communicate(timeout=60)
  assert caught, 'no save was caught in progress'
  assert proc.returncode == -signal.SIGKILL
  assert os.path.isdir(os.path.join(checkpoints, caught))  # half-written, left by the kill
  assert not os.path.exists(os.path.join(cut, 'summary.json'))

  r = run_cli('launch.train', *args, '--config.train.skip_nonfinite=2')
  assert r.returncode == 0, r.stderr
  resumed = int(re.search(r'resumed from the checkpoint at step (\d+)', r.stderr).group(1))
  assert resumed < int(caught.split('.')[0])
  assert not [n for n in os.listdir(checkpoints) if 'tmp' in n]  # cleaned up
  assert [{k: v for k, v in row.items() if k != 'skipped_steps'} for row in metrics(cut)] == (
      metrics(whole_cli_run))


@pytest.mark.slow
def test_a_second_launch_on_a_training_workdir_is_refused(tmp_path, cache_dir):
  """While one launch.train trains in a workdir, the same command again is refused with one
  line naming the holder, and the first goes on. Killed (kill -9), the first leaves a lock file
  that blocks nothing: the same command resumes (and is stopped here with SIGTERM)."""
  workdir = str(tmp_path / 'w')
  args = train_args(workdir, cache_dir, steps=100000)  # trains until stopped
  first = start_train(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    wait_for_row(os.path.join(workdir, 'metrics.jsonl'), 5, first)
    r = run_cli('launch.train', *args)
    one_line_error(r, f'--workdir={workdir} is in use: process {first.pid} on ',
                   'wait for it to finish, or stop it first')
    assert first.poll() is None
  finally:
    first.kill()
    first.wait()
  again = start_train(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  seen = []
  for line in again.stderr:
    seen.append(line)
    if 'resumed from the checkpoint at step' in line:
      again.send_signal(signal.SIGTERM)
      break
  _, err = again.communicate(timeout=120)
  assert again.returncode == 0, ''.join(seen) + err
  assert 'stopped at step' in err


@pytest.mark.slow
def test_nonfinite_loss_through_the_cli_is_one_line(tmp_path, cache_dir):
  workdir = str(tmp_path / 'nan')
  r = run_cli('launch.train', *train_args(workdir, cache_dir, '--config.train.learning_rate=1e30',
                                          '--config.checkpoint.every_steps=1', steps=10))
  run_error(r, 'step 2: loss is ', 'the last checkpoint is step 1 in ', 'Lower train.learning_rate')


@pytest.mark.slow
def test_full_disk_through_the_cli_is_one_line(small_fs, cache_dir):
  """The filesystem fills while launch.train runs (after its step-10 checkpoint): one line,
  status 2, none of orbax's or TensorBoard's tracebacks; the complete checkpoints stay."""
  workdir = os.path.join(small_fs, 'w')
  proc = start_train(train_args(workdir, cache_dir, steps=100000), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
  checkpoint = os.path.join(workdir, 'checkpoints', '10')
  deadline = time.time() + 240
  while not os.path.exists(checkpoint) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  fill(small_fs)
  out, err = proc.communicate(timeout=120)
  run_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
            f'cannot write ', workdir, 'No space left on device')
  done = [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()]
  assert done and min(int(n) for n in done) >= 10
  metrics(workdir)  # every row parses


# test_sweep.py's two-arm sweep, long enough to be killed in the middle of an arm.
SWEEP = SWEEP_CONFIG.replace('c.train.steps = 6', 'c.train.steps = 100')
assert 'c.train.steps = 100' in SWEEP



def report_tables(workdir):
  """report.md's table rows, without the timing column."""
  r = run_cli('launch.report', f'--workdir={workdir}')
  assert r.returncode == 0, r.stderr
  with open(os.path.join(workdir, 'report.md')) as f:
    table = [l.split('|') for l in f if l.startswith('|')]
  assert table
  drop = [i for i, cell in enumerate(table[0]) if 'tokens/s' in cell]
  return [[c for i, c in enumerate(row) if i not in drop] for row in table]


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_uninterrupted_report(tmp_path, cache_dir):
  """kill -9 of launch.sweep in the middle of its second arm: re-launching it skips the finished
  arm (and its evaluation), resumes the interrupted one from its checkpoint, and the report and
  every arm's metrics equal those of a sweep that ran through."""
  config = tmp_path / 'sweep.py'
  config.write_text(SWEEP)

  def args(workdir):
    return [f'--config={config}', f'--workdir={workdir}', '--progress=false',
            f'--config.data.cache_dir={cache_dir}', *TINY]

  whole = str(tmp_path / 'whole')
  r = run_cli('launch.sweep', *args(whole), timeout=600)
  assert r.returncode == 0, r.stderr

  cut = str(tmp_path / 'cut')
  proc = subprocess.Popen([sys.executable, '-m', 'launch.sweep', *args(cut)], cwd=ROOT,
                          env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for_row(os.path.join(cut, 'alibi-s0', 'metrics.jsonl'), 25, proc)
  proc.kill()
  proc.wait()
  assert os.path.exists(os.path.join(cut, 'rope-s0', 'summary.json'))
  assert not os.path.exists(os.path.join(cut, 'alibi-s0', 'summary.json'))

  r = run_cli('launch.sweep', *args(cut), timeout=600)
  assert r.returncode == 0, r.stderr
  assert r.stderr.count('already holds this finished run') == 1
  assert r.stderr.count('resumed from the checkpoint at step') == 1
  for arm in ('rope-s0', 'alibi-s0'):
    assert metrics(os.path.join(cut, arm)) == metrics(os.path.join(whole, arm)), arm
  assert report_tables(cut) == report_tables(whole)


def children(pid):
  with open(f'/proc/{pid}/task/{pid}/children') as f:
    return [int(c) for c in f.read().split()]


def process_id(pid):
  with open(f'/proc/{pid}/environ', 'rb') as f:
    env = dict(e.split(b'=', 1) for e in f.read().split(b'\0') if b'=' in e)
  return int(env[b'JAX_PROCESS_ID'])


@pytest.mark.slow
def test_lost_process_of_two_ends_the_other_and_the_rerun_resumes_both(tmp_path, cache_dir,
                                                                        whole_cli_run):
  """kill -9 of process 1 of a 2-process launch.local_cluster run: process 0 notices at its
  next collective and exits with one line, well within launch.local_cluster's GRACE_SECONDS
  (after which it would be killed); re-running the command resumes both processes from the
  last checkpoint to the 1-process run's metrics (up to float32 reordering)."""
  from launch.local_cluster import GRACE_SECONDS
  from tests.test_distributed import close, cluster_cmd
  two = str(tmp_path / 'two')
  args = train_args(two, cache_dir, steps=SLOW_STEPS)
  proc = subprocess.Popen(cluster_cmd(*args), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  wait_for_row(os.path.join(two, 'metrics.jsonl'), 25, proc, timeout=300)
  (victim,) = [c for c in children(proc.pid) if process_id(c) == 1]
  os.kill(victim, signal.SIGKILL)
  killed = time.time()
  _, err = proc.communicate(timeout=GRACE_SECONDS + 60)
  took = time.time() - killed
  assert proc.returncode != 0
  assert took < GRACE_SECONDS, f'process 0 took {took:.1f}s: it did not notice by itself'
  assert 'Traceback' not in err, err[-3000:]
  errors = sorted(l for l in err.splitlines() if l.startswith('error: '))
  assert len(errors) == 2, err[-3000:]
  assert errors[0].startswith('error: process 0: lost contact with another process of this run')
  assert errors[1].startswith('error: process 1 was killed (SIGKILL)')
  assert not os.path.exists(os.path.join(two, 'summary.json'))

  r = subprocess.run(cluster_cmd(*args), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'resumed from the checkpoint' in r.stderr
  close(metrics(two), metrics(whole_cli_run))
