"""The model and its jitted, sharded functions for one resolved config on one mesh.

`make_trainer` is the one place that builds them: launch.train's loop, the evaluations, launch.bench
and launch.compile all start from it, so every caller compiles the same step.
"""

import contextlib
import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np

from research import cpu, distributed, parallel
from research.data import batch as batch_lib, pipeline
from research.errors import ConfigError
from research.model import archs, attention
from research.model.transformer import ModelConfig
from research.train import optim
from research.train import step as step_lib


class InMesh:
  """A jitted function traced under its mesh and logical-axis rules, so that the activations'
  sharding constraints (nn.with_logical_constraint) apply; flax drops them without a mesh."""

  def __init__(self, fn, mesh, rules):
    self.fn, self.mesh, self.rules = fn, mesh, rules

  def _context(self):
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def __call__(self, *args):
    with self._context():
      return self.fn(*args)

  def lower(self, *args):
    with self._context():
      return self.fn.lower(*args)

  def eval_shape(self, *args):
    with self._context():
      return jax.eval_shape(self.fn, *args)


@dataclasses.dataclass
class Trainer:
  """The model and its jitted, sharded functions for one resolved config on one mesh."""
  model: object  # a flax module of research/model/archs.py
  cfg: ModelConfig
  rules: tuple
  state_sh: object  # NamedShardings of the train state
  batch_sh: object
  repl: object
  init: InMesh  # rng -> sharded train state
  train_fn: InMesh  # (state, batch) -> (state, metrics)
  eval_fn: InMesh  # (params, batch, token_bytes) -> sums
  mesh: object = None
  lengths: dict = None  # the model's sequence lengths (research/data/batch.py)
  tx: object = None  # the optimizer (optax)

  def batch_spec(self, batch_size: int) -> dict:
    """ShapeDtypeStructs of a global Batch, with the batch sharding (for lowering)."""
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sh)
            for k, (shape, dtype) in batch_lib.spec(self.model.BATCH_KEYS, batch_size,
                                                    self.lengths).items()}


def make_trainer(resolved, mesh, lengths: dict | None = None) -> Trainer:
  """lengths: the model's sequence lengths (default: those the config's objective makes)."""
  cfg = ModelConfig.from_config(resolved)
  platform = mesh.devices.flat[0].platform
  # 'auto' picked for the mesh's devices, not this process's default backend: launch.compile
  # compiles for TPU topologies from a CPU host.
  cfg = dataclasses.replace(cfg, attention_impl=attention.resolve_impl(
      cfg.attention_impl, dtype=cfg.dtype, has_relative_kv=cfg.positional == 'shaw',
      platform=platform))
  if cfg.attention_impl == 'jax_cudnn' and platform != 'gpu':
    raise ConfigError(f'model.attention_impl=jax_cudnn needs an NVIDIA GPU; this run is on '
                      f'{platform} (auto picks cuDNN where it applies)')
  model = archs.build(cfg)
  tx = optim.optimizer(resolved.train)
  rules = parallel.logical_rules(resolved.mesh.rules)
  lengths = lengths or pipeline.model_lengths(resolved)
  with nn.logical_axis_rules(rules):
    specs = step_lib.state_specs(model, tx, lengths)
  state_sh = nn.logical_to_mesh_sharding(specs, mesh, rules)
  batch_sh = parallel.batch_sharding(mesh, resolved.mesh.rules)
  repl = parallel.replicated(mesh)
  def unboxed_init(rng):
    return nn.meta.unbox(step_lib.init_state(model, tx, rng, lengths))

  check_shardable(jax.eval_shape(unboxed_init, jax.random.PRNGKey(0)), state_sh)
  init = InMesh(jax.jit(unboxed_init, out_shardings=state_sh), mesh, rules)
  options = cpu.compiler_options(platform, resolved.model.d_model)
  train_fn = InMesh(jax.jit(
      functools.partial(step_lib.train_step, model=model, tx=tx, train_cfg=resolved.train,
                        seed=resolved.seed),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0,
      compiler_options=options), mesh, rules)
  eval_fn = InMesh(jax.jit(functools.partial(step_lib.eval_step, model=model),
                           in_shardings=(state_sh.params, batch_sh, repl), out_shardings=repl,
                           compiler_options=options), mesh, rules)
  return Trainer(model, cfg, rules, state_sh, batch_sh, repl, init, train_fn, eval_fn, mesh,
                 lengths, tx)


def check_batch(config, mesh) -> None:
  """The global batch must split evenly over the devices and the processes that load it."""
  b = config.train.batch_size
  shards = parallel.batch_shards(mesh, config.mesh.rules)
  if b % shards:
    raise ConfigError(f'train.batch_size={b} does not divide over the {shards} devices that the '
                      'batch is split across')
  if shards % jax.process_count():
    raise ConfigError(f'mesh.rules split the batch over {shards} devices, which does not divide '
                      f'over {jax.process_count()} processes loading their own rows')
  distributed.check_batch_layout(parallel.batch_sharding(mesh, config.mesh.rules),
                                 (b, 1))


def check_shardable(abstract_state, shardings) -> None:
  """Every sharded parameter dimension divides over its mesh axes (named, not a crash later)."""
  flat_x = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  for (path, x), sh in zip(flat_x, jax.tree.leaves(shardings)):
    for dim, axes in zip(x.shape, sh.spec):
      axes = (axes,) if isinstance(axes, str) else axes or ()
      size = int(np.prod([sh.mesh.shape[a] for a in axes]))
      if dim % size:
        raise ConfigError(f'mesh.rules shard {jax.tree_util.keystr(path)} (size {dim}) over '
                          f'{"x".join(axes)} = {size} devices, which does not divide it')
