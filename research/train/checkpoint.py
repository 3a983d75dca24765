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
