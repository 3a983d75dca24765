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
  # Every arm is checked before any runs.
  configs = [(a, sweep.arm_config(base, a, _WORKDIR.value)) for a in arms]
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
