"""Train (or resume) one run:

  python -m launch.train --config=experiments/quickstart.py --workdir=runs/quickstart \
      [--config.model.num_layers=2 ...] [--overwrite]

Re-running the same command on the same workdir resumes from its last checkpoint; SIGTERM or
Ctrl-C saves a checkpoint and exits. Results: <workdir>/{config.json, metrics.jsonl, summary.json,
events.*, checkpoints/}.

Several processes (hosts) run the same command: `--distributed` on a Cloud TPU pod or under
Slurm (jax finds the others), or --coordinator_address/--num_processes/--process_id (or the
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID environment, as launch/local_cluster.py
sets) elsewhere. The workdir must be one directory that every process sees.
"""

import os
import signal
import sys
import threading
import traceback

from absl import flags
from ml_collections import config_flags

from launch import cli
from launch.progress import ProgressReporter
from research.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file (get_config)')
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (created; resumed if it holds this run)')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'replace a run with a different config in workdir')
_PROGRESS = flags.DEFINE_bool('progress', True, 'draw a progress bar on stderr')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'join a multi-process run that jax detects (Cloud TPU, Slurm)')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'host:port of process 0 (else $JAX_COORDINATOR_ADDRESS)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'processes in the run '
                                      '(else $JAX_NUM_PROCESSES)')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'this process, 0-based (else $JAX_PROCESS_ID)')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.load_config(_CONFIG)
  from research import distributed  # after flag parsing: importing jax is slow
  distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                         process_id=_PROCESS_ID.value, auto=_DISTRIBUTED.value)
  from research.train import loop
  lead = distributed.is_lead()  # the other processes print nothing of their own

  stop = threading.Event()

  def on_signal(signum, _):
    if stop.is_set():  # a second Ctrl-C: give up on the clean exit
      raise KeyboardInterrupt
    if lead:
      print(f'\n{signal.Signals(signum).name}: saving a checkpoint and stopping '
            '(re-run the same command to resume)', file=sys.stderr)
    stop.set()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  try:
    summary = loop.train(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                         reporter=ProgressReporter(_PROGRESS.value) if lead else None, stop=stop)
  except Exception as e:  # pylint: disable=broad-except
    if not distributed.is_multiprocess():
      raise
    # The other processes wait for this one in a collective, and JAX's shutdown at exit waits for
    # them (until its heartbeat timeout): leave now, with one line (a traceback for a bug).
    if isinstance(e, ConfigError) or distributed.peer_lost(e):
      print(f'error: {distributed.failure_line(e)}', file=sys.stderr)
    else:
      traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(2 if isinstance(e, ConfigError) else 1)
  if not lead:
    return
  if 'interrupted_at_step' in summary:
    print(f'stopped at step {summary["interrupted_at_step"]}; checkpoint saved in '
          f'{_WORKDIR.value}/checkpoints', file=sys.stderr)
    return
  e = summary['eval']
  print(f'\nfinal held-out: loss {e["loss"]:.4f} nats/token, perplexity {e["perplexity"]:.2f}, '
        f'{e["bits_per_byte"]:.3f} bits/byte (byte-unigram entropy of the held-out text: '
        f'{summary["byte_unigram_entropy_bits"]:.3f} bits/byte)')
  print(f'{summary["num_params"]:,} parameters, {summary["tokens_seen"]:,} tokens, '
        f'{summary["wall_seconds"]:.0f}s wall; results in {_WORKDIR.value}')
  for i, text in enumerate(summary.get('samples', [])):
    print(f'\n--- sample {i + 1} ---\n{text.strip()}')


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  cli.run(main)
