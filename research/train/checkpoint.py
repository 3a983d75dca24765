"""Orbax checkpoints of the train state and the loader position, keeping the last N.

A checkpoint is written to `<step>.orbax-checkpoint-tmp` and renamed to `<step>` when complete, so
a process killed during a save leaves only a temporary directory, which the next run removes. A
checkpoint damaged after that (files truncated or removed) fails to restore; `restore_latest`
then falls back to the newest one that restores. A save that fails (a full disk) is an error of
the save's path and cause, raised by the next save, `check` or `close` (saves run in the
background while training goes on).
"""

import logging
import os
import shutil
import traceback

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from research.errors import RunError, first_line, write_errors


class _QuietOrbaxErrors(logging.Filter):
  """Drops orbax's own ERROR records (a traceback per background thread for one failed save,
  and asyncio's 'Task exception was never retrieved' for each of its tasks): every failure they
  report reaches the caller as the exception that save/check/close raise."""

  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    if f'{os.sep}orbax{os.sep}' in record.pathname:
      return False
    if record.name != 'asyncio':
      return True
    tb = record.exc_info[2] if record.exc_info else None
    files = [f.filename for f in traceback.extract_tb(tb)] if tb else []
    return not ('orbax' in record.getMessage() or any('orbax' in f for f in files))


_FILTER = _QuietOrbaxErrors()


class Checkpointer:
  def __init__(self, directory: str, *, keep: int, cleanup: bool = False):
    """cleanup: remove the temporary directories of saves that a killed process left (only the
    run that owns the workdir may: another process may be saving into one right now)."""
    self.directory, self.closed = directory, False
    for name in ('absl', 'asyncio'):
      logger = logging.getLogger(name)
      if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    self.manager = ocp.CheckpointManager(
        directory, item_names=('state', 'loader'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=cleanup))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, loader: dict) -> None:
    if self.manager.latest_step() == step:
      return
    with write_errors(f'a checkpoint in {self.directory}'):  # this save's or the previous one's
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader)))

  def check(self) -> None:
    """Raises RunError if a background save has failed."""
    with write_errors(f'a checkpoint in {self.directory}'):
      self.manager.check_for_errors()

  def restore(self, step: int, abstract_state):
    """abstract_state: ShapeDtypeStructs with shardings, so every leaf lands where it belongs."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loader=ocp.args.JsonRestore()))
    return out.state, out.loader

  def restore_latest(self, abstract_state):
    """(step, state, loader, skipped) of the newest checkpoint that restores; None if none exists.

    skipped: [(step, reason)] of the newer ones that did not restore (truncated or missing files:
    a damaged disk, a copy cut short). When none restores, a RunError names the newest: a changed
    model, not damaged files, is then the likely cause, and nothing is thrown away for it. Every
    process restores; they agree on which one did.
    """
    from research import distributed
    skipped = []
    for step in reversed(self.all_steps()):
      try:
        state, loader = self.restore(step, abstract_state)
        error = None
      except Exception as e:  # pylint: disable=broad-except  # orbax and tensorstore raise many
        error = e
      if not distributed.any_process(error is not None):
        return step, state, loader, skipped
      reason = first_line(error).split(' See full TensorStore')[0] if error else (
          'another process could not read it')
      skipped.append((step, reason))
    if skipped:
      newest, reason = skipped[0]
      raise RunError(f'no checkpoint in {self.directory} restores into this run (the newest, '
                     f'step {newest}: {reason}); they are left as they are: if the code changed, '
                     'run the code that wrote them; --overwrite starts the run again')
    return None

  def set_aside(self, step: int, where: str) -> None:
    """Moves a checkpoint that did not restore out of the way (to where/<step>), so that this
    step is saved anew, keeping its files for a look; process 0 moves, every process reloads."""
    from research import distributed
    if distributed.is_lead():
      os.makedirs(where, exist_ok=True)
      target = os.path.join(where, str(step))
      shutil.rmtree(target, ignore_errors=True)
      os.replace(os.path.join(self.directory, str(step)), target)
    distributed.sync(f'checkpoint {step} set aside')
    self.manager.reload()

  def close(self) -> None:
    self.closed = True
    with write_errors(f'a checkpoint in {self.directory}'):
      self.manager.wait_until_finished()
    self.manager.close()

  def abandon(self) -> None:
    """Closes after a failure, raising nothing: the run's own error is the one to report. The
    saves already under way finish (they are of good states)."""
    if self.closed:
      return
    self.closed = True
    from research import distributed
    if distributed.is_multiprocess():
      # Another process may be gone, and a save's last step is a barrier with every process: it
      # would wait for them until JAX's heartbeat timeout. Its temporary directory is left behind.
      return
    for finish in (self.manager.wait_until_finished, self.manager.close):
      try:
        finish()
      except Exception:  # pylint: disable=broad-except
        pass


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def restore_run(workdir: str):
  """(resolved config, trainer, params, step) of the last checkpoint of the run in workdir."""
  import os
  from research import config as config_lib, parallel
  from research.errors import ConfigError
  from research.train import trainer
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'--workdir={workdir} holds no run (no config.json)')
  resolved = config_lib.load_json(path)
  tr = trainer.make_trainer(resolved, parallel.make_mesh(resolved.mesh.shape))
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                      keep=resolved.checkpoint.keep)  # orbax wants absolute paths
  abstract = abstract_like(tr.init.eval_shape(jax.random.PRNGKey(0)), tr.state_sh)
  found = ckpt.restore_latest(abstract)
  ckpt.close()
  if found is None:
    raise ConfigError(f'--workdir={workdir} holds no checkpoint yet')
  step, state, _, skipped = found
  for bad, reason in skipped:  # read-only here: the training run sets them aside
    absl_logging.warning('checkpoint %d in %s does not restore (%s); using step %d', bad,
                         workdir, reason, step)
  return resolved, tr, state.params, step


def restore_branch(spec: str, tr, *, seed: int):
  """(state, step) of train.init_from='<workdir>:<step>': another run's checkpoint, from which
  this run continues with its own schedule (a cooldown branched from a long run). The other run
  must have this run's model and seed (the data order continues from that step)."""
  import os
  from research.errors import ConfigError
  path, sep, step_text = spec.rpartition(':')
  if not sep or not step_text.isdigit() or not path:
    raise ConfigError(f"train.init_from={spec!r}: expected '<workdir>:<step>'")
  step = int(step_text)
  directory = os.path.join(os.path.abspath(path), 'checkpoints')
  ckpt = Checkpointer(directory, keep=1) if os.path.isdir(directory) else None
  if ckpt is None or step not in ckpt.manager.all_steps():
    raise ConfigError(f'train.init_from={spec}: no checkpoint at step {step} in {path}')
  abstract = abstract_like(tr.init.eval_shape(jax.random.PRNGKey(0)), tr.state_sh)
  try:
    state, loader = ckpt.restore(step, abstract)
  except (ValueError, KeyError) as e:
    raise ConfigError(f'train.init_from={spec}: its checkpoint is not of this model '
                      f'({str(e).splitlines()[0]})') from None
  finally:
    ckpt.manager.close()
  if loader['seed'] != seed:
    raise ConfigError(f'train.init_from={spec}: that run has seed {loader["seed"]}, this one '
                      f'{seed}; a branch continues its data order')
  return state, step

