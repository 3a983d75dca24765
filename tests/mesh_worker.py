"""Trains one tiny model on several meshes of 8 simulated CPU devices; prints JSON.

Run by tests/test_sharding.py in a subprocess, because the device count is fixed when jax starts:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_worker CACHE_DIR STEPS [MESHES]
Meshes (data, fsdp, tensor): one device, then those named (MESHES, e.g. 2x2x2,8x1x1; by default
(8,1,1), (2,4,1), (2,2,2), (1,1,8)), all with the default mesh.rules. For each: the loss at every
step, the final eval loss, and the global and per-device shapes of a few parameters.
"""

import json
import sys

import jax
import numpy as np

from research import config as config_lib
from research import parallel
from research.data import pipeline
from research.train import step as step_lib, trainer

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
WATCHED = ("['embed']['embedding']", "['layers']['attention']['query']['kernel']",
           "['layers']['mlp']['wi']['kernel']", "['layers']['norm_mlp']['scale']")


def tiny_config(cache_dir: str):
  c = config_lib.default_config()
  c.data.tokenizer, c.data.vocab_size, c.data.cache_dir = 'bpe', 512, cache_dir
  c.data.seq_len = 32
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 64, 8
  c.model.scan_layers = True  # parameters stacked on the 'layers' axis, which stays whole
  c.train.batch_size, c.train.warmup_steps, c.train.learning_rate = 8, 2, 3e-3
  c.eval.max_batches = 2
  return c


def main(cache_dir: str, steps: int, meshes=MESHES) -> dict:
  config = tiny_config(cache_dir)
  data = pipeline.prepare(config)
  resolved = config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size)
  token_bytes = data.tokenizer.token_byte_lengths().astype(np.float32)
  out = {}
  for shape in ((1, 1, 1),) + tuple(meshes):
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = parallel.make_mesh(shape, devices)
    config.mesh.shape = shape
    trainer.check_batch(config, mesh)
    tr = trainer.make_trainer(resolved, mesh)
    state = tr.init(jax.random.PRNGKey(resolved.seed))
    shards = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
      name = jax.tree_util.keystr(path)
      if name in WATCHED:
        shard_shapes = {tuple(s.data.shape) for s in x.addressable_shards}
        assert len(shard_shapes) == 1, (name, shard_shapes)
        shards[name] = {'global': list(x.shape), 'shard': list(shard_shapes.pop()),
                        'devices': len(x.addressable_shards)}
    losses = []
    for s in range(steps):
      batch = jax.device_put(data.train_batch(s), tr.batch_sh)
      state, m = tr.train_fn(state, batch)
      losses.append(float(m['loss']))
    sums = None
    for b in data.eval_batches:
      r = tr.eval_fn(state.params, jax.device_put(b, tr.batch_sh),
                     jax.device_put(token_bytes, tr.repl))
      sums = r if sums is None else jax.tree.map(lambda a, b: a + b, sums, r)
    out[str(shape)] = {'losses': losses, 'eval_loss': step_lib.eval_metrics(sums)['loss'],
                       'shards': shards}
  return out


if __name__ == '__main__':
  named = ([tuple(int(n) for n in m.split('x')) for m in sys.argv[3].split(',')] if sys.argv[3:]
           else MESHES)
  print(json.dumps(main(sys.argv[1], int(sys.argv[2]), named)))
