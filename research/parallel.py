"""The device mesh and the logical-axis rules that place parameters and batches on it."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.config import MESH_AXES
from research.errors import ConfigError


def make_mesh(shape, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ConfigError(f'mesh.shape={tuple(shape)} does not divide {len(devices)} devices')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ConfigError(f'mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices, '
                      f'there are {len(devices)}')
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_rules(rules) -> tuple:
  """Config rules as flax's ((logical, mesh axes or None), ...); unnamed axes replicate."""
  return tuple((logical, tuple(mesh) if isinstance(mesh, (list, tuple)) else mesh)
               for logical, mesh in rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Rows of a [batch, length] array split over the mesh axes the 'batch' rule names."""
  axes = dict(logical_rules(rules)).get('batch')
  return NamedSharding(mesh, PartitionSpec(axes))


def batch_shards(mesh: Mesh, rules) -> int:
  axes = dict(logical_rules(rules)).get('batch') or ()
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
