"""Several processes, one program: jax.distributed set-up and what the processes must agree on.

A run on N hosts (or N local CPU processes, launch/local_cluster.py) is N copies of the same
command. Each process loads only its rows of every global batch; process 0 alone writes logs,
summaries and the run's files; checkpoints are written and restored by all of them (orbax).
"""

import os

import jax
import numpy as np

from research.errors import ConfigError

ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def initialize(*, coordinator_address: str = '', num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> bool:
  """Joins the processes of a run; True when there is more than one process.

  Explicit values win; otherwise JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
  from the environment (launch/local_cluster.py and launch/slurm.py set them). With none of them
  and `auto`, jax detects the cluster itself (Cloud TPU pods, Slurm). Call before anything
  touches a device.
  """
  env = {k: os.environ.get(k, '') for k in ENV}
  coordinator_address = coordinator_address or env['JAX_COORDINATOR_ADDRESS']
  try:
    num_processes = num_processes or int(env['JAX_NUM_PROCESSES'] or 0)
    process_id = process_id if process_id >= 0 else int(env['JAX_PROCESS_ID'] or -1)
  except ValueError:
    raise ConfigError(f'JAX_NUM_PROCESSES={env["JAX_NUM_PROCESSES"]!r} and '
                      f'JAX_PROCESS_ID={env["JAX_PROCESS_ID"]!r} must be integers') from None
  explicit = bool(coordinator_address or num_processes or process_id >= 0)
  if not explicit and not auto:
    return False
  if explicit:
    missing = [name for name, ok in (('coordinator address', coordinator_address),
                                     ('number of processes', num_processes > 0),
                                     ('process id', process_id >= 0)) if not ok]
    if missing:
      raise ConfigError(f'multi-process run: the {", ".join(missing)} is missing (flags '
                        '--coordinator_address, --num_processes, --process_id or the '
                        f'environment {", ".join(ENV)})')
    if not 0 <= process_id < num_processes:
      raise ConfigError(f'process id {process_id} is not in [0, {num_processes})')
  # CPU processes exchange their collectives through gloo; accelerators ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()
  return jax.process_count() > 1


def is_multiprocess() -> bool:
  return jax.process_count() > 1


# How a collective or the coordination service reports a process that is gone (gloo on CPUs; the
# coordination service's status codes elsewhere).
_PEER_LOST = ('Gloo', 'Connection reset', 'Connection closed', 'Broken pipe', 'heartbeat',
              'UNAVAILABLE', 'DEADLINE_EXCEEDED')


def peer_lost(e: BaseException) -> bool:
  """True when e says another process of the run is gone (killed, crashed, unreachable)."""
  return any(marker in str(e) for marker in _PEER_LOST)


def failure_line(e: BaseException) -> str:
  """One line for a failure in process i of a multi-process run."""
  from research.errors import ConfigError, first_line
  i = jax.process_index()
  if isinstance(e, ConfigError):
    return f'process {i}: {e}'
  return (f'process {i}: lost contact with another process of this run ({first_line(e)}); '
          're-run the same command on every process to resume from the last checkpoint')


def is_lead() -> bool:
  """Process 0: the one that writes the run's files."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (e.g. a SIGTERM seen by one host)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def check_batch_layout(batch_sharding, global_shape, process_count: int | None = None) -> None:
  """Each process's devices must hold one contiguous block of rows, in process order.

  The loaders give process p rows [p * B/P, (p + 1) * B/P) of each global batch; a mesh whose
  batch axes do not follow the processes that way would need other rows on each host.
  `process_count` defaults to this run's; launch.compile passes a TPU topology's host count.
  """
  p_count = process_count or jax.process_count()
  if p_count == 1:
    return
  per = global_shape[0] // p_count
  rows = {}
  for device, index in batch_sharding.devices_indices_map(tuple(global_shape)).items():
    r = index[0]
    rows.setdefault(device.process_index, set()).update(
        range(r.start or 0, global_shape[0] if r.stop is None else r.stop))
  for p, held in rows.items():
    if held != set(range(p * per, (p + 1) * per)):
      raise ConfigError(f'mesh.shape and mesh.rules place other rows than its own contiguous '
                        f'block of the batch on process {p}; split the batch over the data '
                        'and fsdp axes across hosts (and keep tensor parallelism within a host)')
