"""Run one command as N JAX processes on this machine, the way N hosts would run it:

  python -m launch.local_cluster --num_processes=2 [--devices_per_process=1] -- \
      python -m launch.train --config=experiments/quickstart.py --workdir=runs/two_hosts

Each process gets JAX_COORDINATOR_ADDRESS (a free localhost port), JAX_NUM_PROCESSES,
JAX_PROCESS_ID, JAX_PLATFORMS=cpu and its own devices_per_process CPU devices; launch.train joins
them with jax.distributed and gloo collectives. Process 0's output passes through unchanged; the
others' lines are prefixed with [process i]. SIGTERM / Ctrl-C reach every process (a train run
saves a checkpoint and stops); when one process fails or is killed, the others get GRACE_SECONDS
to exit by themselves (launch.train does at its next collective) and are then killed; the exit
status is the first failure's.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from launch import cli

_NUM = flags.DEFINE_integer('num_processes', 2, 'processes to start')
_DEVICES = flags.DEFINE_integer('devices_per_process', 1, 'CPU devices each process sees')
_PORT = flags.DEFINE_integer('port', 0, 'coordinator port (0: a free one)')


# How long the other processes get to exit by themselves once one has failed, before SIGKILL.
GRACE_SECONDS = 10


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _relay(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ''):
    out.write(prefix + line)
    out.flush()


def main(argv):
  extra, command = cli.args_after_dashes(argv)
  command = command or extra  # `--` may be left out when the command has no flags of ours
  if not command:
    cli.fail('give the command to run after --, e.g. -- python -m launch.train --config=...')
  if _NUM.value < 1 or _DEVICES.value < 1:
    cli.fail('--num_processes and --devices_per_process must be at least 1')
  port = _PORT.value or free_port()
  procs, relays = [], []
  for i in range(_NUM.value):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES=str(_NUM.value), JAX_PROCESS_ID=str(i), JAX_PLATFORMS='cpu',
               JAX_NUM_CPU_DEVICES=str(_DEVICES.value))
    # A forced host device count would override the per-process one.
    env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                                if 'force_host_platform_device_count' not in f)
    try:
      if i == 0:
        procs.append(subprocess.Popen(command, env=env))
        continue
      p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, bufsize=1)
    except OSError as e:
      for p in procs:
        p.kill()
      cli.fail(f'cannot start {command[0]!r}: {e.strerror}')
    procs.append(p)
    relays.append(threading.Thread(target=_relay, args=(p.stdout, f'[process {i}] ', sys.stderr),
                                   daemon=True))
    relays[-1].start()

  def forward(signum, _):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)

  failed = None
  while any(p.poll() is None for p in procs):
    for i, p in enumerate(procs):
      if failed is None and p.poll() not in (None, 0):
        failed = (i, p.returncode)
        if p.returncode < 0:  # killed: it printed nothing of its own
          print(f'error: process {i} was killed ({signal.Signals(-p.returncode).name}); the '
                f'others are stopped within {GRACE_SECONDS}s; re-run the same command to resume '
                'from the last checkpoint', file=sys.stderr)
        # The others notice at their next collective and exit (launch.train), or would wait in
        # it forever: this is what bounds them.
        deadline = time.time() + GRACE_SECONDS
        for q in procs:
          while q.poll() is None and time.time() < deadline:
            time.sleep(0.1)
          if q.poll() is None:
            q.kill()
    time.sleep(0.05)
  for t in relays:
    t.join(timeout=5)
  if failed is None:
    failed = next(((i, p.returncode) for i, p in enumerate(procs) if p.returncode), None)
  if failed is not None:
    i, code = failed
    sys.exit(code if code > 0 else 1)


if __name__ == '__main__':
  cli.run(main)
