"""Benchmark one config's train step and print JSON:

  python -m launch.bench --config=experiments/quickstart.py [--steps=10 --repeats=3]
  python -m launch.bench --config=experiments/bench.py:small --reference=torch

Reports train tokens/s and step time (best of `repeats` timings of `steps` steps each, after
compilation), compile time, model FLOPs per token (research/train/flops.py says what is counted),
the float32/bfloat16 matmul peak measured on this device before and after the timings (the higher
of the two), MFU against it (mfu_of_measured_peak) and against the peak research/train/flops.py
picks (mfu: the datasheet's dense 16-bit figure on a known GPU or TPU in 16-bit compute, else
the measured one), and the loader's batches/s.

--reference=torch also trains launch/torch_reference.py's PyTorch eager copy of the same model
and optimizer from the same initial parameters on the same batches, timing the two alternately
(ours, torch, ours, torch, ...) so that both see the same machine load, and adds torch's best
tokens/s, the ratio ours / torch, every repeat's step time and both final losses.
PyTorch is optional: `pip install -r requirements-bench.txt`.
"""

import json
import time

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file (get_config)')
_STEPS = flags.DEFINE_integer('steps', 10, 'steps per timing')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'timings; the best is reported')
_REFERENCE = flags.DEFINE_enum('reference', 'none', ['none', 'torch'],
                               'also time a reference implementation of the same train step, '
                               'alternating with ours')


def _torch_reference():
  try:
    from launch import torch_reference
  except ImportError as e:
    cli.fail(f'--reference=torch needs PyTorch ({e}); pip install -r requirements-bench.txt')
  return torch_reference


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.load_config(_CONFIG)
  if _STEPS.value < 1 or _REPEATS.value < 1:
    cli.fail('--steps and --repeats must be at least 1')
  reference = _torch_reference() if _REFERENCE.value == 'torch' else None
  if reference:
    reference.check_supported(config)
  import jax
  from research import config as config_lib, parallel
  from research.data import pipeline
  from research.train import flops, trainer

  # compile_seconds is a compile's; JAX_COMPILATION_CACHE_DIR, if set, would load a cached program.
  jax.config.update('jax_enable_compilation_cache', False)
  # Measured first, while nothing else of ours is using the cores.
  peak = flops.total_peak(flops.matmul_peak(config.train.compute_dtype))
  mesh = parallel.make_mesh(config.mesh.shape)
  trainer.check_batch(config, mesh)
  data = pipeline.prepare(config)
  resolved = config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size)
  tr = trainer.make_trainer(resolved, mesh)
  state = tr.init(jax.random.PRNGKey(resolved.seed))
  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  ref = None
  if reference:
    # The same initial parameters, so the two runs train the same model on the same batches.
    ref = reference.TorchReference(resolved, seed=resolved.seed)
    ref.load_jax_params(jax.device_get(state.params))

  def batch(step):
    return jax.device_put(data.train_batch(step), tr.batch_sh)

  t = time.perf_counter()
  step_fn = tr.train_fn.lower(state, batch(0)).compile()
  compile_s = time.perf_counter() - t
  state, m = step_fn(state, batch(0))
  jax.block_until_ready(m)
  if ref:
    ref_m = ref.train_step(ref.batch(data.train_batch(0)))  # first-call allocations, untimed
  times, ref_times = [], []
  for r in range(_REPEATS.value):
    steps = [1 + r * _STEPS.value + i for i in range(_STEPS.value)]
    batches = [batch(s) for s in steps]
    t = time.perf_counter()
    for b in batches:
      state, m = step_fn(state, b)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - t) / _STEPS.value)
    if ref:
      ref_batches = [ref.batch(data.train_batch(s)) for s in steps]
      t = time.perf_counter()
      for b in ref_batches:
        ref_m = ref.train_step(b)
      float(ref_m['loss'])
      ref_times.append((time.perf_counter() - t) / _STEPS.value)
  best = min(times)

  # Measured again after the timings: the higher of the two is the peak (a noisy neighbour can
  # only slow a measurement down).
  peak = max(peak, flops.total_peak(flops.matmul_peak(config.train.compute_dtype)))
  t = time.perf_counter()
  n = 0
  while time.perf_counter() - t < 1.0:
    data.train_batch(n)
    n += 1
  loader_bps = n / (time.perf_counter() - t)

  mfu_peak, peak_source = flops.mfu_peak(resolved.train.compute_dtype, peak)
  fpt = flops.train_flops_per_token(tr.cfg, tr.lengths)
  tokens = resolved.train.batch_size * pipeline.tokens_per_example(tr.lengths)
  out = {
      'tokens_per_sec': tokens / best, 'step_seconds': best, 'compile_seconds': compile_s,
      'flops_per_token': fpt, 'flops_note': '6*N_matmul + 6*L*T*d_attn (causal attention halved)',
      'matmul_peak_flops': peak, 'mfu_peak_flops': mfu_peak, 'mfu_peak_source': peak_source,
      'mfu': tokens / best * fpt / mfu_peak, 'mfu_of_measured_peak': tokens / best * fpt / peak,
      'loader_batches_per_sec': loader_bps, 'loader_over_step': loader_bps * best,
      'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'compute_dtype': resolved.train.compute_dtype, 'attention_impl': tr.cfg.attention_impl,
      'batch_size': resolved.train.batch_size, 'seq_len': resolved.data.seq_len,
      'num_params': num_params, 'step_seconds_per_repeat': times,
  }
  if ref:
    import torch
    ref_best = min(ref_times)
    out.update({
        'reference': 'torch', 'torch_version': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'torch_attention': 'segment mask' if ref.document_mask else 'is_causal',
        'torch_tokens_per_sec': tokens / ref_best, 'torch_step_seconds': ref_best,
        'torch_mfu': tokens / ref_best * fpt / mfu_peak,
        'torch_step_seconds_per_repeat': ref_times,
        'ratio_vs_torch': ref_best / best,
        # Both trained the same steps from the same parameters: these should nearly agree.
        'final_loss': float(m['loss']), 'torch_final_loss': float(ref_m['loss']),
    })
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  cli.run(main)
