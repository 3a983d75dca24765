"""Run every arm of a config file's sweep, each in <workdir>/<arm>/:

  python -m launch.sweep --config=experiments/positional/extrapolation.py:cpu --workdir=runs/extrapolation

Finished arms are skipped, unfinished ones resume from their checkpoints, so re-running the
command after an interruption continues the sweep. `--config.a.b=v` overrides apply to every arm.
When the config file defines EVALUATE (a dict: `kind`, research/evaluate, and its options), each
arm is then evaluated so (launch.evaluate), unless its result is already of the arm's last step.
REPORT (a dict with `kind`, research/report, or a function of the config's argument that returns
one) is copied into sweep.json for launch.report.
Afterwards: python -m launch.report --workdir=<workdir>. Compiled programs are kept in JAX's
persistent cache under <data.cache_dir>/jax-compilation (or $JAX_COMPILATION_CACHE_DIR), so arms
of the same shapes do not compile again.
"""

import json
import os
import signal
import sys
import threading

from absl import flags
from ml_collections import config_flags

from launch import cli
from launch.progress import ProgressReporter
from research.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file with sweep()')
_WORKDIR = flags.DEFINE_string('workdir', None, 'sweep directory; one subdirectory per arm')
_PROGRESS = flags.DEFINE_bool('progress', True, 'draw a progress bar on stderr')
_ONLY = flags.DEFINE_list('only', [], 'run just these arms (names)')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'arms trained at once, each a launch.train '
                                 'process on its share of the cores (1: one after another)')


def _flag_value(value) -> str:
  return str(tuple(value)) if isinstance(value, list) else str(value)


def run_parallel(arms_configs, sweep_dir: str, parallel: int, report, stop) -> bool:
  """Trains the arms `parallel` at a time, each `python -m launch.train` pinned to its share of
  the cores; an arm that branches from another (train.init_from) or that its report kind holds
  back (report.waits_for_earlier) starts once those have finished. Returns False if stopped or
  an arm failed (its log, <arm>/launch.log, says why)."""
  import subprocess
  import time
  cores = sorted(os.sched_getaffinity(0))
  shares = [cores[i::parallel] for i in range(min(parallel, len(cores)))]
  base_args = [a for a in sys.argv[1:] if a.startswith('--config')]
  done = lambda name: os.path.exists(os.path.join(sweep_dir, name, 'summary.json'))  # noqa: E731
  pending = list(arms_configs)
  running = {}  # share index -> (arm, process)
  ok = True
  while (pending or running) and not stop.is_set():
    for i, (arm, proc) in list(running.items()):
      if proc.poll() is not None:
        del running[i]
        print(f'finished {arm.name} (exit {proc.returncode})', file=sys.stderr)
        ok &= proc.returncode == 0
    free = [i for i in range(len(shares)) if i not in running]
    for arm, config in list(pending):
      if not free or not ok:
        break
      names = [a.name for a, _ in arms_configs]
      earlier = names[:names.index(arm.name)]
      parent = os.path.basename(config.train.init_from.rpartition(':')[0])
      if (parent and not done(parent)) or (
          report.waits_for_earlier(sweep_dir, arm.name) and not all(map(done, earlier))):
        continue
      pending.remove((arm, config))
      if not done(arm.name):
        report.before_arm(sweep_dir, arm.name, config)
      workdir = os.path.join(sweep_dir, arm.name)
      os.makedirs(workdir, exist_ok=True)
      overrides = [f'--config.{k}={_flag_value(v)}' for k, v in config_flat_overrides(arm, config)]
      share = shares[free.pop(0)]
      log = open(os.path.join(workdir, 'launch.log'), 'a')
      proc = subprocess.Popen(
          [sys.executable, '-m', 'launch.train', *base_args, *overrides, f'--workdir={workdir}',
           '--progress=false'], stdout=log, stderr=subprocess.STDOUT,
          preexec_fn=lambda share=share: os.sched_setaffinity(0, share))
      running[shares.index(share)] = (arm, proc)
      print(f'started {arm.name} on cores {share}', file=sys.stderr)
    time.sleep(0.2)
  for _, proc in running.values():  # stopped: the arms save a checkpoint and exit
    proc.send_signal(signal.SIGTERM)
    proc.wait()
  return ok and not stop.is_set()


def config_flat_overrides(arm, config):
  """The arm's overrides as (key, value) of its resolved config ({sweep} filled in)."""
  from research import config as config_lib
  flat = config_lib.flat(config)
  return [(k, flat[k]) for k in arm.overrides]


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    cli.fail('--workdir is required')
  base = cli.load_config(_CONFIG)
  import jax
  from research import evaluate, report, sweep
  from research.train import loop
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    # The arms of a sweep compile the same programs again and again (every seed, every budget of
    # one size): JAX's persistent cache under data.cache_dir loads them instead.
    jax.config.update('jax_compilation_cache_dir',
                      os.path.abspath(os.path.join(base.data.cache_dir, 'jax-compilation')))

  spec = flags.FLAGS['config'].config_filename
  module, arg = sweep.load_module(spec)
  arms = sweep.arms(module, arg)
  if _ONLY.value:
    unknown = set(_ONLY.value) - {a.name for a in arms}
    if unknown:
      cli.fail(f'--only: no arms named {", ".join(sorted(unknown))}')
    arms = [a for a in arms if a.name in _ONLY.value]
  configs = [(a, sweep.arm_config(base, a, _WORKDIR.value)) for a in arms]  # every arm checked before any runs
  evaluation = dict(getattr(module, 'EVALUATE', None) or {})
  kind = evaluation.pop('kind', '')

  report_spec = getattr(module, 'REPORT', None)
  if callable(report_spec):  # REPORT(arg): a report that depends on the preset
    report_spec = report_spec(arg)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  # One sweep at a time in a directory (each arm's run takes its own lock as well).
  _lock = loop.WorkdirLock(_WORKDIR.value, _WORKDIR.value)  # held until the sweep exits
  path = os.path.join(_WORKDIR.value, 'sweep.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'config': spec, 'arms': [{'name': a.name, 'group': a.group,
                                          'overrides': a.overrides} for a in sweep.arms(module, arg)],
               'evaluate': getattr(module, 'EVALUATE', None),
               'report': report_spec}, f, indent=1)
  os.replace(path + '.tmp', path)  # a sweep killed here leaves the old file whole

  stop = threading.Event()

  def on_signal(signum, _):
    print(f'\n{signal.Signals(signum).name}: stopping the current arm at a checkpoint',
          file=sys.stderr)
    stop.set()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  if _PARALLEL.value < 1:
    cli.fail(f'--parallel={_PARALLEL.value}: must be at least 1')
  if _PARALLEL.value > 1:
    if not run_parallel(configs, _WORKDIR.value, _PARALLEL.value, report, stop):
      print('stopped, or an arm failed (see its launch.log); re-run the same command to '
            'continue the sweep', file=sys.stderr)
      return
    # Then one after another as below: finished arms are skipped; each is evaluated.
  for i, (arm, config) in enumerate(configs):
    print(f'[{i + 1}/{len(configs)}] {arm.name}', file=sys.stderr)
    workdir = os.path.join(_WORKDIR.value, arm.name)
    if not os.path.exists(os.path.join(workdir, 'summary.json')):
      report.before_arm(_WORKDIR.value, arm.name, config)  # e.g. a prediction made before it trains
    try:
      summary = loop.train(config, workdir, reporter=ProgressReporter(_PROGRESS.value), stop=stop)
    except ConfigError as e:
      raise type(e)(f'arm {arm.name}: {e}') from None
    if 'interrupted_at_step' in summary:
      print(f'stopped in {arm.name}; re-run the same command to continue the sweep',
            file=sys.stderr)
      return
    if hasattr(module, 'EVALUATE'):
      if not evaluate.is_current(workdir, kind, summary['step']):
        evaluate.evaluate(workdir, kind, **evaluation)
  print(f'sweep finished; now: python -m launch.report --workdir={_WORKDIR.value}')


if __name__ == '__main__':
  cli.run(main)
