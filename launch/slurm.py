"""Write an sbatch script that trains on several GPU nodes, one JAX process per node, and submit it:

  python -m launch.slurm --nodes=2 --gpus_per_node=8 [--partition=P] [--time=HH:MM:SS] \
      [--job_name=research] [--output=runs/slurm/research.sbatch] [--dry_run] -- \
      --config=experiments/quickstart.py --workdir=runs/quickstart

Run it from the repository root on a Slurm login node whose filesystem the compute nodes share,
with the Python environment the job should use (its interpreter is the one the script calls; for
GPUs it needs jax's CUDA build beside requirements.txt, e.g. pip install 'jax[cuda12]==0.10.2').
The script names no working directory: sbatch runs a job where it was submitted, and launch.slurm
submits from the repository root, so its paths are relative to it (the interpreter's too, when
the environment lives inside the repository). Submitting the script by hand: from the root.
Each task learns its place from JAX_COORDINATOR_ADDRESS (the job's first node), JAX_NUM_PROCESSES
and JAX_PROCESS_ID (its Slurm rank), which launch.train hands to jax.distributed.initialize.
The job's output goes beside the script, as <job name>-<job id>.out. --dry_run prints the script
instead of writing and submitting it.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

from absl import flags

from launch import cli
from research.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NODES = flags.DEFINE_integer('nodes', None, 'number of nodes, one JAX process on each')
_GPUS = flags.DEFINE_integer('gpus_per_node', None, 'GPUs on each node')
_PARTITION = flags.DEFINE_string('partition', None, 'Slurm partition (default: the cluster\'s)')
_TIME = flags.DEFINE_string('time', None, 'time limit, e.g. 12:00:00 or 2-00:00:00')
_JOB_NAME = flags.DEFINE_string('job_name', 'research', 'Slurm job name')
_OUTPUT = flags.DEFINE_string('output', None, 'where to write the script '
                              '(default: runs/slurm/<job_name>.sbatch)')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'print the script; write and submit nothing')


def _from_root(path: str) -> str:
  """path relative to the repository (the job's working directory) when inside it, else absolute."""
  relative = os.path.relpath(path, ROOT)
  return os.path.abspath(path) if relative.startswith('..') else relative


def script(train_args, launcher_args, log_dir) -> str:
  """The sbatch script: #SBATCH header, then srun with one task per node."""
  header = [
      f'--job-name={_JOB_NAME.value}',
      f'--nodes={_NODES.value}',
      '--ntasks-per-node=1',
      f'--gpus-per-node={_GPUS.value}',
      *([f'--partition={_PARTITION.value}'] if _PARTITION.value else []),
      *([f'--time={_TIME.value}'] if _TIME.value else []),
      f'--output={_from_root(log_dir)}/%x-%j.out',
  ]
  train = shlex.join([_from_root(sys.executable), '-m', 'launch.train', *train_args])
  return '\n'.join([
      '#!/bin/bash',
      # Escaped: a newline inside an argument would end the comment and start a command.
      f'# Written by: python -m launch.slurm {shlex.join(launcher_args)}'.replace('\n', '\\n'),
      *(f'#SBATCH {line}' for line in header),
      '',
      'set -eu',
      '# sbatch starts the job in the directory it was submitted from: the paths here are',
      '# relative to the repository root.',
      'test -f launch/train.py || { echo "error: submit this script from the repository root" >&2;'
      ' exit 2; }',
      '',
      '# jax.distributed for launch.train: the coordinator is the first node, on a port the job',
      '# id picks, so two jobs sharing a node do not collide.',
      'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
      'export JAX_COORDINATOR_ADDRESS="$head_node:$((20000 + SLURM_JOB_ID % 20000))"',
      'export JAX_NUM_PROCESSES="$SLURM_NNODES"',
      '',
      '# Each task reads its own rank, so JAX_PROCESS_ID is set inside the srun\'d shell; the',
      '# arguments reach it as "$@", quoted once. --kill-on-bad-exit: if one process dies, the',
      '# others would wait for it in a collective forever.',
      'srun --kill-on-bad-exit=1 \\',
      '  bash -c \'export JAX_PROCESS_ID="$SLURM_PROCID"; exec "$@"\' bash \\',
      f'  {train}',
      '',
  ])


def _check_flags():
  for holder, example in ((_NODES, 2), (_GPUS, 8)):
    if holder.value is None:
      raise ConfigError(f'--{holder.name} is required, e.g. --{holder.name}={example}')
    if holder.value < 1:
      raise ConfigError(f'--{holder.name}={holder.value}: must be at least 1')
  # What Slurm accepts: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
  if _TIME.value and not re.fullmatch(r'(\d+-)?\d+(:\d\d){0,2}', _TIME.value):
    raise ConfigError(f'--time={_TIME.value}: expected HH:MM:SS (or D-HH:MM:SS, or minutes)')
  # These land on #SBATCH lines unquoted.
  if not re.fullmatch(r'[A-Za-z0-9._-]+', _JOB_NAME.value):
    raise ConfigError(f'--job_name={_JOB_NAME.value}: letters, digits, ".", "_" and "-" only')
  if _PARTITION.value is not None and not re.fullmatch(r'[A-Za-z0-9._,-]+', _PARTITION.value):
    raise ConfigError(f'--partition={_PARTITION.value}: letters, digits, ".", "_", "-", "," only')


def main(argv):
  extra, train_args = cli.args_after_dashes(argv)
  if extra:
    cli.fail(f'unexpected arguments: {" ".join(extra)} (arguments for launch.train go after --)')
  _check_flags()
  if not train_args:
    cli.fail('launch.train\'s arguments go after --, e.g. '
             '-- --config=experiments/quickstart.py --workdir=runs/quickstart')
  ours = sys.argv[1:len(sys.argv) - len(train_args)]
  written_by = [a for a in ours if not re.fullmatch(r'--(no)?dry_run(=\S*)?', a)] + train_args
  path = _OUTPUT.value or os.path.join(ROOT, 'runs', 'slurm', f'{_JOB_NAME.value}.sbatch')
  log_dir = os.path.dirname(os.path.abspath(path))  # the job's output goes beside the script
  text = script(train_args, written_by, log_dir)
  if _DRY_RUN.value:
    print(text, end='')
    return

  os.makedirs(log_dir, exist_ok=True)  # Slurm would not create it, and the job would fail unseen
  with open(path, 'w') as f:
    f.write(text)
  if shutil.which('sbatch') is None:
    cli.fail(f'sbatch not found on PATH; the script is in {_from_root(path)}: on the cluster, '
             'submit it from the repository root')
  status = subprocess.call(['sbatch', os.path.abspath(path)], cwd=ROOT)
  if status:
    cli.fail(f'sbatch {path} exited with status {status}')
  print(f'script: {path}; job output: {_from_root(log_dir)}/{_JOB_NAME.value}-<job id>.out')


if __name__ == '__main__':
  cli.run(main)
