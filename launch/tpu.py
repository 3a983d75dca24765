"""Create a Cloud TPU VM slice, train on every host of it, follow the log, stop, delete:

  python -m launch.tpu create --name=lm --zone=us-west4-a --accelerator=v5e-32 [--spot]
  python -m launch.tpu run --name=lm --zone=us-west4-a -- \
      --config=experiments/quickstart.py --workdir=runs/quickstart
  python -m launch.tpu logs --name=lm --zone=us-west4-a [--worker=3]
  python -m launch.tpu stop --name=lm --zone=us-west4-a     # SIGTERM: checkpoint, then exit
  python -m launch.tpu delete --name=lm --zone=us-west4-a

Each command wraps `gcloud compute tpus tpu-vm`; with --dry_run it prints the commands instead,
one per line, quoted so they can be pasted. Run from the repository root.

`run` ships the committed HEAD (git archive: commit first; uncommitted changes get a warning),
unpacks it into ~/research on every worker, installs requirements.txt and the matching jax[tpu]
into ~/research/.venv (Python 3.11 from uv: the TPU images carry 3.10), then starts
`python -m launch.train --distributed <args after -->` on all workers at once under nohup, output
in ~/research/train.log, so a dropped ssh connection does not stop it. Relative --workdir paths
land in ~/research on each worker.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl import flags

from launch import cli
from research.errors import ConfigError

COMMANDS = ('create', 'run', 'logs', 'stop', 'delete')

# Our accelerator family: (GCP accelerator-type prefix, runtime version Google recommends for JAX).
ACCELERATORS = {
    'v4': ('v4', 'tpu-ubuntu2204-base'),
    'v5e': ('v5litepod', 'v2-alpha-tpuv5-lite'),
    'v5p': ('v5p', 'v2-alpha-tpuv5'),
    'v6e': ('v6e', 'v2-alpha-tpuv6e'),
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GCLOUD = ['gcloud', 'compute', 'tpus', 'tpu-vm']
REMOTE = 'research'  # the code's directory on each worker, under the home gcloud ssh starts in
LOG = 'train.log'
PID = 'train.pid'
PYTHON = '3.11'  # requirements.txt needs >= 3.11

_NAME = flags.DEFINE_string('name', None, 'TPU VM name (lowercase letters, digits, hyphens)')
_ZONE = flags.DEFINE_string('zone', None, 'GCP zone, e.g. us-west4-a')
_PROJECT = flags.DEFINE_string('project', None, 'GCP project (default: gcloud config)')
_ACCELERATOR = flags.DEFINE_string('accelerator', None, 'create: v5e-N, v5p-N, v4-N or v6e-N')
_VERSION = flags.DEFINE_string('version', None, 'create: TPU runtime (default: the accelerator\'s)')
_SPOT = flags.DEFINE_bool('spot', False, 'create: a Spot TPU (cheaper, may be preempted)')
_WORKER = flags.DEFINE_integer('worker', 0, 'logs: which worker to follow')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'print the commands instead of running them')


def accelerator_type(name: str) -> tuple[str, str]:
  """Our accelerator name -> (GCP accelerator type, default runtime version)."""
  match = re.fullmatch(r'(v4|v5e|v5p|v6e)-([1-9][0-9]*)', name)
  if not match:
    raise ConfigError(f'unknown accelerator {name!r}: expected v5e-N, v5p-N, v4-N or v6e-N '
                      '(e.g. v5e-32)')
  prefix, runtime = ACCELERATORS[match[1]]
  return f'{prefix}-{match[2]}', runtime


def _jax_requirement() -> str:
  """jax[tpu] at the version requirements.txt pins: it brings the libtpu that jax was built for."""
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    pinned = re.search(r'^jax==(\S+)', f.read(), re.M)
  return f'jax[tpu]=={pinned[1]}' if pinned else 'jax[tpu]'


def _tpu(verb, *args):
  """gcloud compute tpus tpu-vm VERB ARGS [--project=P]."""
  return [*GCLOUD, verb, *args] + ([f'--project={_PROJECT.value}'] if _PROJECT.value else [])


def _on_workers(script, worker='all'):
  return _tpu('ssh', _NAME.value, f'--zone={_ZONE.value}', f'--worker={worker}',
              f'--command={script}')


def create_commands():
  accelerator, runtime = accelerator_type(_ACCELERATOR.value)
  return [_tpu('create', _NAME.value, f'--zone={_ZONE.value}', f'--accelerator-type={accelerator}',
               f'--version={_VERSION.value or runtime}', *(['--spot'] if _SPOT.value else []))]


def run_commands(train_args):
  tarball = os.path.join(tempfile.gettempdir(), f'{_NAME.value}-{REMOTE}.tar.gz')
  setup = ' && '.join([
      f'mkdir -p {REMOTE}', f'tar -xzf {REMOTE}.tar.gz -C {REMOTE}', f'rm {REMOTE}.tar.gz',
      f'cd {REMOTE}', 'export PATH="$HOME/.local/bin:$PATH"',
      '(command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh)',
      f'(test -x .venv/bin/python || uv venv --python {PYTHON} .venv)',
      f'uv pip install --python .venv/bin/python -r requirements.txt '
      f'{shlex.quote(_jax_requirement())}',
  ])
  # A second launch.train would find the TPU busy and truncate the first one's log: refuse.
  start = (
      f'cd {REMOTE} || exit 1; '
      f'if [ -e {PID} ] && kill -0 "$(cat {PID})" 2>/dev/null; then '
      f'echo "$(hostname): launch.train is still running (pid $(cat {PID})); '
      f'python -m launch.tpu stop ... ends it" >&2; exit 1; fi; '
      f'nohup .venv/bin/python -m launch.train --distributed {shlex.join(train_args)} '
      f'> {LOG} 2>&1 < /dev/null & echo $! > {PID}')
  return [
      ['git', 'archive', '--format=tar.gz', f'--output={tarball}', 'HEAD'],
      _tpu('scp', tarball, f'{_NAME.value}:{REMOTE}.tar.gz', f'--zone={_ZONE.value}',
           '--worker=all'),
      _on_workers(setup),
      _on_workers(start),
  ]


def logs_commands():
  return [_on_workers(f'tail -n 100 -F {REMOTE}/{LOG}', worker=_WORKER.value)]


def stop_commands():
  pid = f'"$(cat {REMOTE}/{PID} 2>/dev/null)"'
  return [_on_workers(f'if kill -0 {pid} 2>/dev/null; then kill -TERM {pid}; '
                      f'else echo "$(hostname): launch.train is not running"; fi')]


def delete_commands():
  return [_tpu('delete', _NAME.value, f'--zone={_ZONE.value}', '--quiet')]


def _warn_uncommitted():
  """git archive ships HEAD only: say so when the working tree differs from it."""
  try:
    status = subprocess.run(['git', 'status', '--porcelain'], cwd=ROOT, capture_output=True,
                            text=True, check=False)
  except OSError:  # no git: the run's own check says so
    return
  changed = [line[3:] for line in status.stdout.splitlines()]
  if changed:
    more = f' and {len(changed) - 3} more' if len(changed) > 3 else ''
    print(f'warning: run ships the committed HEAD; uncommitted changes stay here: '
          f'{", ".join(changed[:3])}{more}', file=sys.stderr)


def _execute(commands):
  """Runs the commands in order, echoed to stderr; the first failure is the error."""
  for program in dict.fromkeys(c[0] for c in commands):
    if shutil.which(program) is None:
      hint = (' (install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install)'
              if program == 'gcloud' else '')
      cli.fail(f'{program} not found on PATH{hint}; --dry_run prints the commands')
  for command in commands:
    print(f'+ {shlex.join(command)}', file=sys.stderr, flush=True)
    try:
      status = subprocess.call(command, cwd=ROOT)
    except KeyboardInterrupt:  # Ctrl-C ends `logs`; it reached gcloud too
      sys.exit(130)
    if status:
      cli.fail(f'the command above exited with status {status}')


def main(argv):
  positional, train_args = cli.args_after_dashes(argv)
  if not positional:
    cli.fail(f'which command? one of {", ".join(COMMANDS)}')
  command, *extra = positional
  if command not in COMMANDS:
    cli.fail(f'unknown command {command!r}: expected one of {", ".join(COMMANDS)}')
  if extra:
    cli.fail(f'unexpected arguments: {" ".join(extra)} (arguments for launch.train go after --)')
  if not _NAME.value:
    cli.fail('--name is required (the TPU VM name)')
  if not re.fullmatch(r'[a-z]([-a-z0-9]*[a-z0-9])?', _NAME.value):
    cli.fail(f'--name={_NAME.value}: lowercase letters, digits and hyphens, starting with a letter')
  if not _ZONE.value:
    cli.fail('--zone is required, e.g. --zone=us-west4-a')
  for flag, owner in (('accelerator', 'create'), ('version', 'create'), ('spot', 'create'),
                      ('worker', 'logs')):
    if flags.FLAGS[flag].present and command != owner:
      cli.fail(f'--{flag} goes with {owner}, not {command}')
  if train_args and command != 'run':
    cli.fail(f'arguments after -- are for launch.train and go with run, not {command}')

  if command == 'create':
    if not _ACCELERATOR.value:
      cli.fail('create needs --accelerator, e.g. --accelerator=v5e-32')
    commands = create_commands()
  elif command == 'run':
    if not train_args:
      cli.fail('run needs launch.train\'s arguments after --, e.g. '
               '-- --config=experiments/quickstart.py --workdir=runs/quickstart')
    _warn_uncommitted()
    commands = run_commands(train_args)
  else:
    commands = {'logs': logs_commands, 'stop': stop_commands, 'delete': delete_commands}[command]()

  if _DRY_RUN.value:
    print('\n'.join(shlex.join(c) for c in commands))
    return
  _execute(commands)
  if command == 'run':
    where = f'--name={_NAME.value} --zone={_ZONE.value}'
    where += f' --project={_PROJECT.value}' if _PROJECT.value else ''
    print(f'launch.train started on every worker; follow worker 0 with: '
          f'python -m launch.tpu logs {where}')


if __name__ == '__main__':
  cli.run(main)
