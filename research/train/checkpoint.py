"""Orbax checkpoints of the train state and the loader position, keeping the last N."""

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, *, keep: int):
    self.manager = ocp.CheckpointManager(
        directory, item_names=('state', 'loader'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, loader: dict) -> None:
    if self.manager.latest_step() == step:
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader)))

  def restore(self, step: int, abstract_state):
    """abstract_state: ShapeDtypeStructs with shardings, so every leaf lands where it belongs."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loader=ocp.args.JsonRestore()))
    return out.state, out.loader

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
  step = ckpt.latest_step()
  if step is None:
    raise ConfigError(f'--workdir={workdir} holds no checkpoint yet')
  abstract = abstract_like(tr.init.eval_shape(jax.random.PRNGKey(0)), tr.state_sh)
  state, _ = ckpt.restore(step, abstract)
  ckpt.close()
  return resolved, tr, state.params, step
