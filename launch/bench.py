"""Benchmark one config's train step and print JSON:

  python -m launch.bench --config=experiments/quickstart.py [--steps=10 --repeats=3]

Reports train tokens/s and step time (best of `repeats` timings of `steps` steps each, after
compilation), compile time, model FLOPs per token (research/train/flops.py says what is counted),
the float32/bfloat16 matmul peak measured on this device just before, MFU against it, and the
loader's batches/s.
"""

import json
import time

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file (get_config)')
_STEPS = flags.DEFINE_integer('steps', 10, 'steps per timing')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'timings; the best is reported')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.load_config(_CONFIG)
  if _STEPS.value < 1 or _REPEATS.value < 1:
    cli.fail('--steps and --repeats must be at least 1')
  import jax
  from research import config as config_lib, parallel
  from research.train import flops, loop

  # Measured first, while nothing else of ours is using the cores.
  peak = flops.total_peak(flops.matmul_peak(config.train.compute_dtype))
  mesh = parallel.make_mesh(config.mesh.shape)
  loop.check_batch(config, mesh)
  data = loop.prepare_data(config)
  resolved = config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size)
  tr = loop.make_trainer(resolved, mesh)
  state = tr.init(jax.random.PRNGKey(resolved.seed))

  def batch(step):
    return jax.device_put(data.train_batch(step), tr.batch_sh)

  t = time.perf_counter()
  step_fn = tr.train_fn.lower(state, batch(0)).compile()
  compile_s = time.perf_counter() - t
  state, m = step_fn(state, batch(0))
  jax.block_until_ready(m)
  best = float('inf')
  for r in range(_REPEATS.value):
    batches = [batch(1 + r * _STEPS.value + i) for i in range(_STEPS.value)]
    t = time.perf_counter()
    for b in batches:
      state, m = step_fn(state, b)
    jax.block_until_ready(m)
    best = min(best, (time.perf_counter() - t) / _STEPS.value)

  t = time.perf_counter()
  n = 0
  while time.perf_counter() - t < 1.0:
    data.train_batch(n)
    n += 1
  loader_bps = n / (time.perf_counter() - t)

  fpt = flops.train_flops_per_token(tr.cfg, resolved.data.seq_len)
  tokens = resolved.train.batch_size * resolved.data.seq_len
  print(json.dumps({
      'tokens_per_sec': tokens / best, 'step_seconds': best, 'compile_seconds': compile_s,
      'flops_per_token': fpt, 'flops_note': '6*N_matmul + 6*L*T*d_attn (causal attention halved)',
      'matmul_peak_flops': peak, 'mfu': tokens / best * fpt / peak,
      'loader_batches_per_sec': loader_bps, 'loader_over_step': loader_bps * best,
      'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'compute_dtype': resolved.train.compute_dtype,
      'batch_size': resolved.train.batch_size, 'seq_len': resolved.data.seq_len,
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
  }, indent=2))


if __name__ == '__main__':
  cli.run(main)
