"""The training run: config -> data -> sharded state -> steps -> metrics, checkpoints, summary.

`train` neither prints nor parses flags: progress goes to an optional `reporter`, and a caller's
`stop` event (set on SIGTERM / Ctrl-C by the CLI) ends the run at the next step boundary with a
checkpoint saved, from which re-running the same command continues exactly.
"""

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import config as config_lib
from research import distributed, parallel
from research.data import pipeline
from research.errors import ConfigError, RunError, write_errors
from research.model import decode
from research.train import checkpoint as ckpt_lib
from research.train import flops as flops_lib
from research.train import metrics as metrics_lib
from research.train import optim
from research.train import step as step_lib
from research.train.trainer import check_batch, make_trainer

RUN_FILES = ('config.json', 'metrics.jsonl', 'summary.json', 'data_split.json', 'samples.txt',
             'tokenizer.tiktoken', 'tokenizer.tiktoken.json', 'checkpoints',
             'checkpoints_skipped')


class Reporter:
  """What the loop tells its caller; the CLI draws a progress bar from it. All optional."""

  def message(self, text: str) -> None: ...
  def start(self, *, first_step: int, total_steps: int) -> None: ...
  def train(self, step: int, metrics: dict) -> None: ...
  def eval(self, step: int, metrics: dict) -> None: ...
  def close(self) -> None: ...


def check_workdir(workdir: str, resolved, *, overwrite: bool, shown_as: str = '') -> bool:
  """True when workdir holds this same run (resume). Refuses a different run unless overwrite."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = json.load(f)
  diff = config_lib.config_diff(old, config_lib.normalized(resolved))
  if not diff:
    return True
  if not overwrite:
    # Values that resolve() derives from others follow the change the user made: list them last.
    diff.sort(key=lambda d: d.split(':')[0] in config_lib.DERIVED)
    shown = ', '.join(diff[:3]) + (f' and {len(diff) - 3} more' if len(diff) > 3 else '')
    raise ConfigError(f'--workdir={shown_as or workdir} holds a run with a different config '
                      f'({shown}); '
                      'pass --overwrite to replace it, or choose another workdir')
  return False


def clear_run(workdir: str) -> None:
  for name in os.listdir(workdir):
    if name in RUN_FILES or name.startswith('events.out.tfevents'):
      p = os.path.join(workdir, name)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


class WorkdirLock:
  """An exclusive flock on <workdir>/.lock while a run trains there. The kernel drops it when its
  holder exits or is killed, so a dead run never blocks the next launch."""

  def __init__(self, workdir: str, shown_as: str):
    path = os.path.join(workdir, '.lock')
    with write_errors(path):
      self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(self.fd, 200).decode(errors='replace').strip() or 'another process'
      os.close(self.fd)
      raise RunError(f'--workdir={shown_as} is in use: {holder} is training in it (it holds '
                     f'{path}); wait for it to finish, or stop it first') from None
    except OSError:  # a filesystem without flock (some network mounts): run unlocked
      pass
    os.ftruncate(self.fd, 0)
    os.write(self.fd, f'process {os.getpid()} on {socket.gethostname()}\n'.encode())

  def release(self) -> None:
    os.close(self.fd)


class NonFiniteGuard:
  """Stops the run at a step whose metrics (loss, gradient norm) are NaN or infinite, or, with
  train.skip_nonfinite=N, counts the steps the train step skipped and stops at the (N+1)-th in
  a row. The steps' metrics are fetched together at the next log, eval or save, where the loop
  waits for the device anyway, and checked before anything of those steps is written or saved."""

  def __init__(self, skip: int, checkpoints: str, *, skipped: int = 0, streak: int = 0):
    self.skip, self.checkpoints = skip, checkpoints
    self.skipped, self.streak = skipped, streak  # carried in the checkpoint across a resume
    self.pending = []

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))

  def check(self, last_saved) -> None:
    values = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    self.pending = []
    for step, v in zip(steps, values):
      names = sorted((k for k in v if k != 'skipped'), key=lambda k: (k != 'loss', k))
      bad = next((k for k in names if not math.isfinite(float(v[k]))), None)
      if self.skip:
        if not v['skipped']:
          self.streak = 0
          continue
        self.skipped += 1
        self.streak += 1
        if self.streak <= self.skip:
          continue
        what = (f'{bad} is {float(v[bad])}, non-finite for {self.streak} steps in a row '
                f'(train.skip_nonfinite={self.skip})')
        hint = ''
      elif bad is None:
        continue
      else:
        what = f'{bad} is {float(v[bad])}'
        hint = ('. Lower train.learning_rate, or set train.skip_nonfinite=N to skip up to N such '
                'steps in a row')
      kept = (f'the last checkpoint is step {last_saved} in {self.checkpoints}'
              if last_saved is not None else 'no checkpoint was saved')
      raise RunError(f'step {step}: {what}; stopped, saving nothing after it ({kept}){hint}')

  def counters(self) -> dict:
    return {'skipped_steps': self.skipped, 'nonfinite_streak': self.streak}


def train(config, workdir: str, *, overwrite: bool = False, reporter: Reporter | None = None,
          stop: threading.Event | None = None) -> dict:
  """Runs (or resumes) the run in workdir; returns summary.json's content."""
  # The workdir lock, the checkpointer and the metrics file are released however the run ends.
  with contextlib.ExitStack() as held:
    return _train(config, workdir, overwrite=overwrite, reporter=reporter, stop=stop, held=held)


def _train(config, workdir: str, *, overwrite: bool, reporter, stop, held) -> dict:
  reporter = reporter or Reporter()
  stop = stop or threading.Event()
  config_lib.validate(config)
  given_workdir, workdir = workdir, config_lib.workdir_path(workdir)
  mesh = parallel.make_mesh(config.mesh.shape)
  check_batch(config, mesh)

  t0 = time.time()
  data = pipeline.prepare(config)
  resolved = config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size)
  resume = check_workdir(workdir, resolved, overwrite=overwrite, shown_as=given_workdir)
  distributed.sync('workdir checked')  # every process decided before process 0 writes
  summary_path = os.path.join(workdir, 'summary.json')
  if resume and os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if summary.get('step') == resolved.train.steps:
      reporter.message(f'{workdir} already holds this finished run; nothing to do')
      return summary
  tr = make_trainer(resolved, mesh)
  model, cfg = tr.model, tr.cfg
  lead = distributed.is_lead()
  refused = None
  if lead:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'--workdir={given_workdir}: cannot create it ({e.strerror})') from None
    try:  # process 0 alone: the workdir is one directory that every process shares
      held.callback(WorkdirLock(workdir, given_workdir).release)
    except RunError as e:
      refused = e
  if distributed.any_process(refused is not None):  # every process stops, not only process 0
    raise refused or RunError(f'--workdir={given_workdir} is in use by another run')
  if lead:
    if not resume:
      clear_run(workdir)
    with write_errors(f'the run files in {workdir}'):
      _write_json(os.path.join(workdir, 'config.json'), config_lib.normalized(resolved))
      _write_json(os.path.join(workdir, 'data_split.json'), data.split)
      ranks = getattr(data.tokenizer, 'path', None)
      if ranks:  # the run carries its tokenizer, so it can be read without the cache
        shutil.copyfile(ranks, os.path.join(workdir, 'tokenizer.tiktoken'))
        if os.path.exists(ranks + '.json'):
          shutil.copyfile(ranks + '.json', os.path.join(workdir, 'tokenizer.tiktoken.json'))
  distributed.sync('workdir ready')
  reporter.message(f'data ready in {time.time() - t0:.1f}s: tokenizer {data.tokenizer.name} '
                   f'({data.tokenizer.vocab_size} tokens), rows of {config.data.seq_len}, '
                   f'{len(data.eval_batches)} eval batches')
  with nn.logical_axis_rules(tr.rules):
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    # This run owns the workdir (its lock): it may remove the half-written saves of a killed one.
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=resolved.checkpoint.keep, cleanup=True)
    held.callback(ckpt.abandon)
    found, loader_pos = None, {}
    if resume:
      abstract = ckpt_lib.abstract_like(tr.init.eval_shape(jax.random.PRNGKey(0)),
                                        tr.state_sh)
      found = ckpt.restore_latest(abstract)
    if found is not None:
      start, state, loader_pos, skipped = found
      aside = os.path.join(workdir, 'checkpoints_skipped')
      for bad, reason in skipped:
        reporter.message(f'warning: checkpoint {bad} in {ckpt_dir} does not restore ({reason}); '
                         f'moved to {aside}/{bad}, resuming from step {start}')
        ckpt.set_aside(bad, aside)  # so that step is saved anew
      if loader_pos['step'] != start or loader_pos['seed'] != resolved.seed:
        raise ConfigError(f'checkpoint {start} in {workdir} does not match this run')
      reporter.message(f'resumed from the checkpoint at step {start}')
    elif resolved.train.init_from:
      state, start = ckpt_lib.restore_branch(resolved.train.init_from, tr, seed=resolved.seed)
      reporter.message(f'branched from {resolved.train.init_from}')
    else:
      start = 0
      state = tr.init(jax.random.PRNGKey(resolved.seed))
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    token_bytes = jax.device_put(data.tokenizer.token_byte_lengths().astype(np.float32), tr.repl)
    # Jitted: optax's schedule op by op cost ~25 ms per logged row (1 s of a 200-step tiny run).
    schedule = jax.jit(optim.schedule(resolved.train))
    batch_sh, train_fn, eval_fn = tr.batch_sh, tr.train_fn, tr.eval_fn

    def global_batch(local):
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(batch_sh, x), local)

    def batch_at(step):
      return global_batch(data.train_batch(step))

    total = resolved.train.steps
    next_batch = batch_at(start) if start < total else None
    t = time.time()
    compiled = train_fn.lower(state, next_batch or batch_at(0)).compile()
    compile_s = time.time() - t
    dtype = resolved.train.compute_dtype
    peak, peak_source = flops_lib.mfu_peak(
        dtype, flops_lib.total_peak(flops_lib.matmul_peak(dtype)))
    flops_per_token = flops_lib.train_flops_per_token(cfg, tr.lengths)
    tokens_per_step = resolved.train.batch_size * pipeline.tokens_per_example(tr.lengths)
    reporter.message(f'{num_params:,} parameters; train step compiled in {compile_s:.1f}s; '
                     f'{flops_per_token / 1e6:.1f} MFLOPs/token; {peak_source} matmul peak '
                     f'{peak / 1e9:.0f} GFLOP/s')

    def evaluate(params):
      sums = None
      for b in data.eval_batches:
        out = eval_fn(params, global_batch(b), token_bytes)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
      return step_lib.eval_metrics(jax.device_get(sums))

    writer = metrics_lib.MetricsWriter(workdir, resume_step=start, enabled=lead)
    held.callback(writer.close)
    skip = resolved.train.skip_nonfinite
    guard = NonFiniteGuard(skip, ckpt_dir, skipped=loader_pos.get('skipped_steps', 0),
                           streak=loader_pos.get('nonfinite_streak', 0))

    def save(step):
      ckpt.save(step, state, {'step': step, 'seed': resolved.seed, **guard.counters()})
    log_every, eval_every = resolved.train.log_every, resolved.eval.every_steps
    ckpt_every = resolved.checkpoint.every_steps
    reporter.start(first_step=start, total_steps=total)
    held.callback(reporter.close)  # a progress bar ends its line before any error is printed
    last_eval = None
    window_t, window_steps = time.time(), 0
    step = start
    train_time = 0.0

    def stopping():  # every process stops at the same step, whichever one saw the signal
      return distributed.any_process(stop.is_set())

    while step < total and not stopping():
      batch = next_batch
      state, m = compiled(state, batch)
      step += 1
      window_steps += 1
      guard.add(step, m)
      if step < total:
        next_batch = batch_at(step)  # built while the device runs this step
      if step % log_every == 0 or step % eval_every == 0 or step % ckpt_every == 0 or \
          step == total:
        guard.check(ckpt.latest_step())  # before anything of these steps is written or saved
        ckpt.check()  # a background save that failed (a full disk) stops the run here
      if step % log_every == 0 or step == total:
        s, row = step, {k: float(v) for k, v in jax.device_get(m).items() if k != 'skipped'}
        elapsed = time.time() - window_t
        train_time += elapsed
        tps = window_steps * tokens_per_step / max(elapsed, 1e-9)
        row.update(learning_rate=float(schedule(s - 1)), tokens_per_sec=tps,
                   mfu=tps * flops_per_token / peak)
        if skip:
          row['skipped_steps'] = guard.skipped  # so far in the run
        writer.write(s, 'train', row)
        reporter.train(s, row)
        window_steps = 0
      if step % eval_every == 0 or step == total:
        last_eval = evaluate(state.params)
        last_eval['bits_per_byte_unigram'] = data.unigram_bits
        writer.write(step, 'eval', last_eval)
        reporter.eval(step, last_eval)
      if step % ckpt_every == 0 or step == total:
        save(step)
      if step % log_every == 0 or step == total:
        window_t = time.time()
    if step < total:  # stopped early; saves nothing when this step is already saved
      guard.check(ckpt.latest_step())
      save(step)
    ckpt.close()
    writer.close()
    reporter.close()
    if step < total:
      return {'interrupted_at_step': step}

    if last_eval is None:  # a finished run re-launched: evaluate its final state again
      last_eval = evaluate(state.params)
      last_eval['bits_per_byte_unigram'] = data.unigram_bits
    summary = {
        'step': step, 'eval': last_eval, 'num_params': num_params,
        'tokens_seen': step * tokens_per_step, 'flops_per_token': flops_per_token,
        'epochs': data.epochs(step),
        'compile_seconds': compile_s, 'wall_seconds': time.time() - t0,
        'train_seconds_this_launch': train_time,
        'tokenizer': data.tokenizer.name, 'vocab_size': data.tokenizer.vocab_size,
        'byte_unigram_entropy_bits': data.unigram_bits,
        'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
    }
    if resolved.sample.num_samples:
      summary['samples'] = sample_text(tr, state.params, data, resolved)
    if skip:
      summary['skipped_steps'] = guard.skipped
    if lead:
      with write_errors(f'the run files in {workdir}'):
        if summary.get('samples'):
          with open(os.path.join(workdir, 'samples.txt'), 'w') as f:
            f.write('\n\n'.join(summary['samples']) + '\n')
        # Last: a summary.json marks the run finished.
        _write_json(os.path.join(workdir, 'summary.json'), summary)
    return summary


def sample_text(tr, params, data, resolved) -> list:
  """The end-of-run samples: launch.sample's cached decoding with the run's sample.* settings."""
  s = resolved.sample
  return decode.sample_texts(tr.model, params, [s.prompt], tokenizer=data.tokenizer,
                             converter=data.converter, num_samples=s.num_samples,
                             max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                             seed=resolved.seed, fit=True)[0]


def _write_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
